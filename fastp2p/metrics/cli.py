"""``python -m fastp2p.metrics RESULTS_DIR`` (``fastp2p-metrics``): a results folder's scores, printed one a line and
written to RESULTS_DIR/metrics.json. Every mistake is one line and exit status 2, said before the scoring where
the flags already show it (a bad --device or --inception_weights) and never losing scores that were computed."""

import argparse
import contextlib
import json
import math
import os
import sys

import torch

from fastp2p.errors import MetricError, first_line
from fastp2p.metrics.distances import FeatureDistances, MissingPackage, check_weights
from fastp2p.metrics.folder import score_folder
from fastp2p.metrics.pairs import PSNR_CAP
from fastp2p.metrics.scores import format_scores

METRICS_FILE = "metrics.json"


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


def usable_device(name):
    """--device as a torch.device that holds a tensor here: a name torch does not know, or a device this machine
    lacks (cuda:7 on one GPU, cuda without CUDA), is a MetricError rather than a traceback mid-scoring."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MetricError(f"--device {name} is not a device name (cpu, cuda, cuda:1, ...)") from None
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:  # torch's "not compiled with CUDA" is an AssertionError
        raise MetricError(f"--device {name} cannot be used here ({first_line(error)})") from None
    return device


def distances_for(args):
    """FID/KID for the command line: None with --no_fid, or when their packages are missing and there are pairs to
    score anyway (said in a line); an error when FID/KID are all that was asked, or their weights cannot be had.
    --device and --inception_weights are checked first, also with --no_fid: a flag given is never ignored."""
    device = usable_device(args.device)
    if args.inception_weights is not None:
        check_weights(args.inception_weights)
    if args.no_fid:
        return None
    try:
        return FeatureDistances(device, weights=args.inception_weights)
    except MissingPackage as error:
        if args.real_dir is not None:
            raise
        print(f"fid, kid: skipped ({error})", file=sys.stderr)
        return None
    except MetricError as error:
        local = "" if args.inception_weights else "give a local copy with --inception_weights FILE, or "
        raise MetricError(f"{error}; {local}score without FID/KID (--no_fid)") from None


def write_scores(folder, values):
    """metrics.json, whole or not at all: written beside it and renamed over it, so a write that fails (a read-only
    folder, a full disk) leaves any metrics.json there as it was and is said in one line."""
    path = os.path.join(folder, METRICS_FILE)
    temp = path + ".tmp"
    try:
        with open(temp, "w") as f:
            json.dump({name: value if math.isfinite(value) else None for name, value in values.items()}, f, indent=1)
        os.replace(temp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temp)
        reason = os.strerror(error.errno) if error.errno else first_line(error)
        raise MetricError(f"cannot write {METRICS_FILE} into {folder}: {reason} (the scores are printed above)") \
            from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        values = score_folder(args.results_dir, args.real_dir, distances_for(args))
        print(format_scores(values), flush=True)
        write_scores(args.results_dir, values)
    except MetricError as error:
        print(f"fastp2p.metrics: error: {error}", file=sys.stderr)
        return 2
    return 0
