"""FID and KID: torchmetrics' FrechetInceptionDistance and KernelInceptionDistance of a generated and a real set.

Any ``nn.Module`` that maps uint8 NCHW images to feature vectors can stand in for Inception-v3 (the tests use a
small one, as the Inception weights are a download).
"""

import os
import warnings
from collections import OrderedDict

import torch

from fastp2p.errors import MetricError, first_line

KID_SUBSET_SIZE = 1000  # torchmetrics' default; smaller sets use all their images in each subset


class MissingPackage(MetricError):
    """FID/KID's packages are not installed: the pair metrics can still be scored."""


def check_weights(path):
    """Refuse an Inception weights file that is missing or that is no state dict (names to tensors) torch.load
    reads as torch-fidelity loads it, in one line naming it: said before any scoring, not after, nor ignored."""
    if not os.path.isfile(path):
        raise MetricError(f"--inception_weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an UnpicklingError, a truncated zip's RuntimeError, an EOFError, an OSError
        raise MetricError(f"--inception_weights {path} is not a weights file torch.load reads "
                          f"({first_line(error)})") from None
    if not (isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values())):
        raise MetricError(f"--inception_weights {path} holds no weights (a state dict of tensors)")


class FeatureDistances:
    """torchmetrics' FID and KID sharing one feature network; the real set's features are kept across
    ``reset_fake``, so scoring a generator again extracts only the generated images' features.

    ``feature=None`` is torchmetrics' Inception-v3 (torch-fidelity's, its weights from ``weights`` or downloaded
    on first use); a missing package or weights that cannot be had is a MetricError in one line. The metrics do
    not synchronize across processes: one process scores."""

    def __init__(self, device, feature=None, weights=None):
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.image.kid import KernelInceptionDistance
        except ImportError:
            raise MissingPackage("FID and KID need torchmetrics: pip install 'fastp2p[metrics]'") from None
        try:
            self.fid = FrechetInceptionDistance(feature=2048 if feature is None else feature,
                                                feature_extractor_weights_path=weights, reset_real_features=False,
                                                sync_on_compute=False)
        except ModuleNotFoundError:
            raise MissingPackage("FID and KID with the Inception network need torch-fidelity: "
                                 "pip install 'fastp2p[metrics]'") from None
        except Exception as error:  # the weights download: URLError, HTTPError, a hub RuntimeError, a bad file
            source = "" if weights is None else f" from {weights}"
            raise MetricError(f"the Inception network's weights could not be loaded{source} "
                              f"({first_line(error)})") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # KID warns that it keeps every feature vector, which it must
            self.kid = KernelInceptionDistance(feature=self.fid.inception, reset_real_features=False,
                                               sync_on_compute=False)
        self.fid.to(device)
        self.kid.to(device)
        self.counts = {True: 0, False: 0}

    def update(self, images, real):
        """Add a uint8 NCHW RGB batch to the real (``real=True``) or generated set."""
        self.fid.update(images, real=real)
        self.kid.update(images, real=real)
        self.counts[real] += len(images)

    def has_real(self):
        return self.counts[True] > 0

    def reset_fake(self):
        self.fid.reset()
        self.kid.reset()
        self.counts[False] = 0

    def compute(self):
        """{'fid', 'kid'}; KID's random subsets are drawn from a fixed seed, so a score repeats exactly."""
        smallest = min(self.counts.values())
        if smallest < 2:
            raise MetricError(f"FID and KID need at least 2 generated and 2 real images, got {self.counts[False]} "
                              f"and {self.counts[True]}")
        self.kid.subset_size = min(KID_SUBSET_SIZE, smallest)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kid_mean, _ = self.kid.compute()
        return OrderedDict([("fid", float(self.fid.compute())), ("kid", float(kid_mean))])
