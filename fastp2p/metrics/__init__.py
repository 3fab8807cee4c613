"""Image-quality metrics: L1, PSNR and SSIM of generated/real pairs, FID and KID of generated/real sets.

One home for the metric math, which ``--eval_freq`` uses during training and ``python -m fastp2p.metrics
RESULTS_DIR`` (``fastp2p-metrics``) uses on a folder written by ``fastp2p.test`` or the reference's test.py.
Both score 8-bit RGB images, the pixels a result PNG holds, so a score during training and a score of the
saved results agree:

- l1: mean absolute difference of the pixel values scaled to [0, 1];
- psnr: per-image ``10 log10(255^2 / MSE)`` over the 8-bit values, averaged over images (an identical pair
  counts as PSNR_CAP dB rather than infinity);
- ssim: per-image SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 on the 8-bit range,
  over the valid region (no padding: windows lie inside the image), averaged over channels, pixels and images;
- fid, kid: torchmetrics' FrechetInceptionDistance and KernelInceptionDistance on Inception-v3 features
  (``pip install 'fastp2p[metrics]'``).

The modules: pairs (L1, PSNR, SSIM), distances (FID, KID), scores (a scoring's sums and lines), scorer
(``--eval_freq``), folder (a results folder on disk) and cli (the command).
"""

from fastp2p.errors import MetricError
from fastp2p.metrics.cli import main
from fastp2p.metrics.distances import FeatureDistances, MissingPackage
from fastp2p.metrics.folder import score_folder
from fastp2p.metrics.pairs import PSNR_CAP, SSIM_SIGMA, SSIM_WINDOW, l1, psnr, ssim, to_uint8
from fastp2p.metrics.scorer import GeneratorScorer, eval_phase
from fastp2p.metrics.scores import Scores, format_scores

__all__ = ["PSNR_CAP", "SSIM_SIGMA", "SSIM_WINDOW", "FeatureDistances", "GeneratorScorer", "MetricError",
           "MissingPackage", "Scores", "eval_phase", "format_scores", "l1", "main", "psnr", "score_folder", "ssim",
           "to_uint8"]
