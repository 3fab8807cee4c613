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
  (``pip install 'fastp2p[metrics]'``); any ``nn.Module`` that maps uint8 NCHW images to feature vectors can
  stand in for Inception (the tests use a small one, as the Inception weights are a download).
"""

import argparse
import json
import math
import os
import sys
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from fastp2p.checkpoint import unwrap
from fastp2p.data import IMG_EXTENSIONS, load_rgb
from fastp2p.data.datasets import DATASET_MODES
from fastp2p.errors import DatasetError, MetricError

PSNR_CAP = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
KID_SUBSET_SIZE = 1000  # torchmetrics' default; smaller sets use all their images in each subset
FEATURE_BATCH = 32  # images per feature-network pass when scoring a folder
FAKE_SUFFIX, REAL_SUFFIX = "_fake_B", "_real_B"


class MissingPackage(MetricError):
    """FID/KID's packages are not installed: the pair metrics can still be scored."""


# -- the pair metrics, on uint8 NCHW RGB batches ------------------------------------------------------------


def to_uint8(images):
    """A [-1, 1] float NCHW batch as uint8 RGB, the bytes a result PNG of fastp2p or the reference holds.

    As the reference, ``(x + 1) / 2 * 255`` in float32 is truncated, not rounded; values are clamped to
    [-1, 1] first (the reference's uint8 cast would wrap them) and NaN becomes 0. Grayscale is tiled to RGB.
    """
    images = images.detach().float().nan_to_num(nan=-1.0).clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return ((images + 1) / 2.0 * 255.0).to(torch.uint8)


def check_pair(fake, real):
    if fake.shape != real.shape:
        raise MetricError(f"generated and real images differ in size: {tuple(fake.shape[-2:])} and "
                          f"{tuple(real.shape[-2:])}")


def l1(fake, real):
    """Per-image mean |fake - real| of uint8 NCHW batches, on values scaled to [0, 1]."""
    check_pair(fake, real)
    return (fake.double() - real.double()).abs().mean(dim=(1, 2, 3)) / 255.0


def psnr(fake, real):
    """Per-image PSNR in dB of uint8 NCHW batches (MAX = 255), capped at PSNR_CAP for identical images."""
    check_pair(fake, real)
    mse = (fake.double() - real.double()).square().mean(dim=(1, 2, 3))
    return (10 * torch.log10(255.0 ** 2 / mse)).clamp(max=PSNR_CAP)


def gaussian_window(device):
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x.square() / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim(fake, real):
    """Per-image SSIM of uint8 NCHW batches: local statistics under a Gaussian window, valid region only.

    The window is separable, so each local mean is two 1-D convolutions per channel (float64)."""
    check_pair(fake, real)
    height, width = fake.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise MetricError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    x, y = fake.double(), real.double()
    channels = x.shape[1]
    g = gaussian_window(x.device)
    rows, cols = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def local_mean(t):
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.square()
    var_y = local_mean(y * y) - mu_y.square()
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    return (numerator / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))).mean(dim=(1, 2, 3))


PAIR_METRICS = OrderedDict([("l1", l1), ("psnr", psnr), ("ssim", ssim)])


# -- FID and KID ---------------------------------------------------------------------------------------------


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
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MetricError(f"the Inception network's weights could not be loaded ({reason})") from None
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


class Scores:
    """Running sums of the pair metrics (on the device, read once at the end) and the sets' feature distances."""

    def __init__(self, distances=None):
        self.distances = distances
        self.sums = OrderedDict()
        self.pairs = 0

    def add_pairs(self, fake, real):
        for name, metric in PAIR_METRICS.items():
            self.sums[name] = self.sums.get(name, 0) + metric(fake, real).sum()
        self.pairs += len(fake)

    def add_set(self, images, real):
        if self.distances is not None:
            self.distances.update(images, real)

    def result(self):
        """name -> float, the pair metrics first (when there were pairs), then FID and KID."""
        values = OrderedDict((name, float(total) / self.pairs) for name, total in self.sums.items())
        if self.distances is not None:
            values.update(self.distances.compute())
        return values


def format_scores(values):
    """One ``name value`` line per metric."""
    return "\n".join(f"{name} {value:.4f}" if name in ("l1", "kid") else f"{name} {value:.3f}"
                     for name, value in values.items())


# -- --eval_freq: the generator scored during training ---------------------------------------------------------


def eval_phase(opt):
    """The split --eval_freq scores: 'val' when the dataroot has it, else 'test'; None when it has neither."""
    for phase in ("val", "test"):
        folders = [phase] if opt.dataset_mode == "aligned" else [phase + "A", phase + "B"]
        if all(os.path.isdir(os.path.join(opt.dataroot, folder)) for folder in folders):
            return phase
    return None


class GeneratorScorer:
    """The generator (G, or CycleGAN's G_A) scored on the val/test split between epochs.

    The images are prepared as fastp2p.test prepares them (resized to --crop_size, no flip) and the generator
    runs as fastp2p.test runs it by default, without --eval: in training mode (dropout on, BatchNorm on the
    batch's statistics), under no_grad. Batches of --batch_size, except with BatchNorm, whose batch statistics
    make an image's output depend on its batch-mates: there one image a pass, as fastp2p.test does.

    Nothing of the training run changes: the plain module is called (no DDP hooks or collectives), the torch RNG
    is forked and seeded from --seed (the dropout draws are the same at each evaluation, also after a resume),
    and the generator's buffers (BatchNorm statistics) are put back afterwards. Every rank runs the generator,
    as --norm syncbatch synchronizes its forward; rank 0 alone keeps the scores (``keep``)."""

    def __init__(self, opt, model, amp_dtype, distances=None, keep=True):
        self.phase = eval_phase(opt)
        if self.phase is None:
            raise MetricError(f"--eval_freq scores the val or test split, and {opt.dataroot} has neither")
        self.paired = opt.dataset_mode == "aligned"
        if keep and not self.paired and distances is None:
            raise MetricError("--eval_freq on unpaired data scores FID and KID alone, which need torchmetrics and "
                              "the Inception weights: pip install 'fastp2p[metrics]'")
        test_time = {"phase": self.phase, "load_size": opt.crop_size, "no_flip": True, "serial_batches": True}
        self.dataset = DATASET_MODES[opt.dataset_mode](opt.replace(**test_time))
        self.generator = unwrap(getattr(model, "net" + model.model_names[0]))
        self.sides = ("A", "B") if opt.direction == "AtoB" else ("B", "A")
        self.batch_size = 1 if opt.norm in ("batch", "syncbatch") else opt.batch_size
        self.device, self.memory_format, self.amp_dtype = model.device, model.runtime.memory_format, amp_dtype
        self.seed = opt.seed
        self.distances = distances
        self.keep = keep

    def batches(self):
        for start in range(0, len(self.dataset), self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
            yield {key: [item[key] for item in items] for key in items[0]}

    def score(self):
        """name -> value (``keep``), or None."""
        scores = Scores(self.distances)
        if self.distances is not None:
            self.distances.reset_fake()
        add_real = self.distances is not None and not self.distances.has_real()
        seen = {False: set(), True: set()}  # unpaired sets repeat the smaller folder's images: each counts once
        buffers = [buffer.clone() for buffer in self.generator.buffers()]
        source, target = self.sides
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            for batch in self.batches():
                inputs = torch.stack(batch[source]).to(self.device, memory_format=self.memory_format)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    fake = to_uint8(self.generator(inputs))  # the feature network runs outside autocast
                if not self.keep:
                    continue
                real = to_uint8(torch.stack(batch[target]).to(self.device))
                if self.paired:
                    scores.add_pairs(fake, real)
                for images, paths, is_real in ((fake, batch[source + "_paths"], False),
                                               (real, batch[target + "_paths"], True)):
                    new = [i for i, path in enumerate(paths) if path not in seen[is_real]]
                    seen[is_real].update(paths)
                    if new and (add_real or not is_real):
                        scores.add_set(images[new], is_real)
            values = scores.result() if self.keep else None
        for buffer, saved in zip(self.generator.buffers(), buffers):
            buffer.copy_(saved)
        return values


# -- python -m fastp2p.metrics RESULTS_DIR --------------------------------------------------------------------


def image_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(IMG_EXTENSIONS))


def results_images(folder):
    """The folder of result images: RESULTS_DIR/images (fastp2p.test, the reference's test.py) or the folder."""
    if not os.path.isdir(folder):
        raise MetricError(f"{folder} is not a folder")
    images = os.path.join(folder, "images")
    return images if os.path.isdir(images) else folder


def read_uint8(path):
    """An image file as a uint8 1x3xHxW tensor."""
    try:
        array = np.asarray(load_rgb(path), dtype=np.uint8)
    except DatasetError as error:
        raise MetricError(str(error)) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def same_size_batches(paths, size=FEATURE_BATCH):
    """Consecutive images as uint8 batches of at most ``size``, a new batch wherever the image size changes."""
    batch = []
    for path in paths:
        image = read_uint8(path)
        if batch and (len(batch) == size or batch[0].shape != image.shape):
            yield torch.cat(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.cat(batch)


def score_folder(folder, real_dir=None, distances=None):
    """Scores of a results folder: its ``*_fake_B`` images against their ``*_real_B`` (pair metrics, and FID/KID
    with ``distances``), or with ``real_dir`` against the images there (FID/KID alone: the sets are unpaired)."""
    images = results_images(folder)
    names = image_files(images)
    if not names:
        raise MetricError(f"no images in {images}")
    fakes = [name for name in names if os.path.splitext(name)[0].endswith(FAKE_SUFFIX)]
    if not fakes:
        raise MetricError(f"no generated images (*{FAKE_SUFFIX}.png) in {images}")
    scores = Scores(distances)
    fake_paths = [os.path.join(images, name) for name in fakes]
    if real_dir is not None:
        if distances is None:
            raise MetricError("--real_dir scores unpaired sets, with FID and KID alone, which --no_fid turns off")
        if not os.path.isdir(real_dir) or not image_files(real_dir):
            raise MetricError(f"--real_dir {real_dir} is not a folder of images")
        add_sets(scores, fake_paths, [os.path.join(real_dir, name) for name in image_files(real_dir)])
        return scores.result()
    pairs = []
    for name, path in zip(fakes, fake_paths):
        stem, ext = os.path.splitext(name)
        real_path = os.path.join(images, stem[: -len(FAKE_SUFFIX)] + REAL_SUFFIX + ext)
        if os.path.isfile(real_path):
            pairs.append((path, real_path))
    if not pairs:
        raise MetricError(f"no pairs in {images}: no *{FAKE_SUFFIX} image has a *{REAL_SUFFIX} image beside it "
                          f"(for unpaired results give the real images with --real_dir)")
    for fake_path, real_path in pairs:
        fake, real = read_uint8(fake_path), read_uint8(real_path)
        if fake.shape != real.shape:
            raise MetricError(f"{os.path.basename(fake_path)} is {fake.shape[3]}x{fake.shape[2]} but "
                              f"{os.path.basename(real_path)} is {real.shape[3]}x{real.shape[2]}")
        scores.add_pairs(fake, real)
    if distances is not None:
        add_sets(scores, [fake for fake, _ in pairs], [real for _, real in pairs])
    return scores.result()


def add_sets(scores, fake_paths, real_paths):
    """The generated and the real images' files into the feature distances, in batches."""
    for paths, real in ((fake_paths, False), (real_paths, True)):
        for batch in same_size_batches(paths):
            scores.add_set(batch, real)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastp2p.metrics",
        description="Score a folder of test results: L1, PSNR, SSIM of each *_fake_B image against its *_real_B "
                    "image, and FID and KID of the two sets (with torchmetrics). Prints one metric a line and "
                    "writes metrics.json into the folder.",
        epilog="PSNR: per-image 10*log10(255^2/MSE) on 8-bit RGB, averaged over images (identical images count as "
               f"{PSNR_CAP:g} dB). SSIM: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03 on the 8-bit range, "
               "over the valid region (no padding), averaged over channels, pixels and images. L1: mean absolute "
               "difference of pixel values scaled to [0, 1].")
    parser.add_argument("results_dir", help="a folder written by fastp2p.test or the reference's test.py (its "
                                            "images/ subfolder is used when there is one)")
    parser.add_argument("--real_dir", help="unpaired results: the folder of real target images; only FID and KID "
                                           "apply")
    parser.add_argument("--no_fid", action="store_true", help="pair metrics only, without FID and KID")
    parser.add_argument("--inception_weights", help="a local file of the Inception-v3 weights FID and KID use "
                                                    "(instead of downloading them)")
    parser.add_argument("--device", default="cpu", help="where the feature network runs, e.g. cuda")
    return parser


def distances_for(args):
    """FID/KID for the command line: None with --no_fid, or when their packages are missing and there are pairs to
    score anyway (said in a line); an error when FID/KID are all that was asked, or their weights cannot be had."""
    if args.no_fid:
        return None
    try:
        return FeatureDistances(torch.device(args.device), weights=args.inception_weights)
    except MissingPackage as error:
        if args.real_dir is not None:
            raise
        print(f"fid, kid: skipped ({error})", file=sys.stderr)
        return None
    except MetricError as error:
        raise MetricError(f"{error}; give a local copy with --inception_weights FILE, or score without FID/KID "
                          f"(--no_fid)") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        values = score_folder(args.results_dir, args.real_dir, distances_for(args))
    except MetricError as error:
        print(f"fastp2p.metrics: error: {error}", file=sys.stderr)
        return 2
    print(format_scores(values))
    path = os.path.join(args.results_dir, "metrics.json")
    with open(path, "w") as f:
        json.dump({name: value if math.isfinite(value) else None for name, value in values.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
