"""cuDNN's algorithm search, the one rule for training and inference: --cudnn_search_all, and cudnn.benchmark."""

import torch

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath

VARYING_SIZES = ("scale_width", "none")
"""--preprocess modes whose images keep their own sizes: there cuDNN would time its algorithms for every new shape"""


def configure_cudnn(config, preprocess, device):
    """cudnn.benchmark where every batch has one image size, timing every algorithm cuDNN lists with
    --cudnn_search_all (benchmark_limit 0; its default is its first 10 picks, which on Hopper can leave older sm80
    kernels in use). Process-wide settings, set on a GPU only."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = preprocess not in VARYING_SIZES
    torch.backends.cudnn.benchmark_limit = 0 if config.cudnn_search_all else 10


CUDNN_SEARCH_ALL = FastPath(
    "cudnn_search_all", "let cudnn.benchmark time every convolution algorithm cuDNN offers "
                        "(torch.backends.cudnn.benchmark_limit 0) rather than its first 10",
    auto=lambda s: s.cuda, bench_row="cudnn_search_all", check=Check(REORDERED_FP32, cpu=False))
