"""``create_fast_loader(opt, kind)``: the --data_loader switch (auto, torch, dali, gpu_cache).

Every kind returns the torch loader's interface: ``len()`` (samples per epoch, the reference's),
iteration yielding {'A', 'B', 'A_paths', 'B_paths'}, ``set_epoch(epoch, skip_batches=0)`` and
``batches_per_epoch``, with the same order and crop/flip draws (see plan.plan_epoch).

auto: the GPU cache when CUDA is present and the set fits its budget; else DALI on CUDA when installed,
else torchvision's GPU decode on CUDA when importable; else the torch path. 'dali' without DALI falls
back to torchvision's GPU decode, as the lent GPU machines have torchvision but no DALI. Each fallback
prints why. Another dataset mode (a user's own class, colorization, template) gets the torch loader, which calls its
class's own item method.
"""

import torch

from fastp2p import distributed
from fastp2p.data.dali_loader import DALILoader, dali_available
from fastp2p.data.datasets import IMAGE_MODES
from fastp2p.data.gpu_cache import CacheDoesNotFit, GPUCacheLoader
from fastp2p.data.loader import create_dataset
from fastp2p.data.torchvision_decode import TorchvisionDecodeLoader, torchvision_available

KINDS = ("auto", "torch", "dali", "gpu_cache")


def _say(text):
    distributed.print_main(f"data loader: {text}")


def _gpu_decode(opt, device):
    """DALI when installed, else torchvision's nvJPEG, else None (the caller falls back)."""
    if dali_available():
        _say("DALI")
        return DALILoader(opt, device_id=device.index if device.type == "cuda" else None)
    if device.type == "cuda" and torchvision_available():
        _say("DALI is not installed; decoding with torchvision on the GPU")
        return TorchvisionDecodeLoader(opt, device)
    return None


def create_fast_loader(opt, kind="auto", device=torch.device("cpu"), budget_bytes=None):
    """The loader for ``kind`` feeding ``device``; ``budget_bytes`` caps the GPU cache (default: a quarter of free
    memory)."""
    if kind not in KINDS:
        raise ValueError(f"--data_loader {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "torch":
        return create_dataset(opt, device)
    if opt.dataset_mode not in IMAGE_MODES:
        if kind != "auto" or device.type == "cuda":
            _say(f"--dataset_mode {opt.dataset_mode} reads its items itself; using the torch loader")
        return create_dataset(opt, device)
    if kind == "gpu_cache" or (kind == "auto" and device.type == "cuda"):
        try:
            loader = GPUCacheLoader(opt, device, budget_bytes)
            _say(f"GPU cache on {device}")
            return loader
        except CacheDoesNotFit as why:
            _say(f"{why}; falling back")
    if kind == "dali" or device.type == "cuda":
        loader = _gpu_decode(opt, device)
        if loader is not None:
            return loader
    if kind == "dali":
        _say("neither DALI (pip install nvidia-dali-cuda130) nor torchvision with CUDA is usable here; "
             "using the torch loader")
    elif kind == "gpu_cache":
        _say("using the torch loader")
    return create_dataset(opt, device)
