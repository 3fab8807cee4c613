"""Process-group setup for torchrun, and the rank questions the rest of the code asks."""

import os

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """Rank 0 alone writes checkpoints, logs and result pages."""
    return rank() == 0


def print_main(*args, **kwargs):
    """print() on rank 0 only: every rank of a run would print the same line."""
    if is_main_process():
        print(*args, **kwargs)


def init_distributed(use_cuda):
    """Join the torchrun process group when WORLD_SIZE > 1 and return this process's device.

    On a GPU that is the current CUDA device, which options.use_cuda chose from --gpu_ids. NCCL on GPUs,
    gloo on CPUs. A single process (python -m, or torchrun with one process) stays ungrouped, so no
    collective is ever paid for.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup_distributed():
    if is_distributed():
        dist.destroy_process_group()
