"""Launch-size heuristics shared by the kernels (no autotuning: it does not run in Triton's interpreter)."""

import functools

import torch


@functools.cache
def target_programs(device, waves=4):
    """Programs worth launching for a split reduction: `waves` per SM on a GPU, a handful in the interpreter."""
    if device.type == "cuda":
        return waves * torch.cuda.get_device_properties(device).multi_processor_count
    return 4
