"""Launch-size heuristics shared by the kernels (no autotuning: it does not run in Triton's interpreter).

Host-side grid arithmetic uses the plain integer helpers here: triton.cdiv and triton.next_power_of_2 are
constexpr functions whose Python wrapper costs microseconds per call, many times the plain arithmetic, and a
norm layer's forward and backward make a score of such calls, on the host's critical path in eager mode.
"""

import functools

import torch


def sized_for_gpu(device):
    """Whether launch plans are sized for a GPU (else for Triton's interpreter, whose cost is per program): the one
    test of it, so that a test can check on the CPU the plans a GPU gets."""
    return device.type == "cuda"


@functools.cache
def target_programs(device, waves=4):
    """Programs worth launching for a split reduction: `waves` per SM on a GPU, a handful in the interpreter."""
    if sized_for_gpu(device):
        return waves * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


GRID_LIMITS = (2**31 - 1, 65535, 65535)
"""CUDA's limits on a launch grid's x, y and z sizes: what grows with the batch or the image goes in x"""


def grid(*dims):
    """A launch grid, checked against GRID_LIMITS: a grid over them is a ValueError naming it, not a failed launch."""
    if any(not 0 <= size <= limit for size, limit in zip(dims, GRID_LIMITS)):
        raise ValueError(f"launch grid {dims} is outside CUDA's limits {GRID_LIMITS[:len(dims)]} (x, y, z)")
    return dims


def cdiv(a, b):
    return -(-a // b)


def next_power_of_2(n):
    """The smallest power of 2 >= n (0 for n <= 0, as triton.next_power_of_2)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


_TICKETS = {}


def tickets(device, count):
    """At least `count` zeroed int32 counters on `device` for kernels whose last program to finish combines the
    others' partial results (it counts arrivals on them and sets them back to zero). The launches on one stream share
    them, since they run in order; each stream has its own, since kernels on two streams run at once
    (--two_streams). A larger buffer is added when one is needed; the smaller ones stay alive, since a CUDA graph
    captured with them keeps using them."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    buffers = _TICKETS.setdefault((device, stream), [])
    if not buffers or buffers[-1].numel() < count:
        buffers.append(torch.zeros(max(count, 4096), dtype=torch.int32, device=device))
    return buffers[-1]


TILE = 2048  # elements a tile aims at: 8 warps from there, 4 below


def tiling(t, length, *, min_channels=1, max_channels=TILE, min_length=1, max_length=TILE):
    """(BLOCK, BLOCK_C, num_warps) of a [BLOCK, BLOCK_C] tile of about TILE elements over an axis of `length`
    (the flattened H*W rows, a row's columns) and the channels (axis 1) of t.

    The unit-stride axis is blocked first, within its bounds, and the other fills the rest of the tile: the
    channels when t is channels-last, the `length` axis otherwise.
    """
    C = t.shape[1]
    length_pow2, c_pow2 = next_power_of_2(length), next_power_of_2(C)
    if t.stride(1) == 1 and C > 1:
        block_c = min(c_pow2, max_channels, max(min_channels, TILE // length_pow2))
        block = min(length_pow2, max(min_length, TILE // block_c))
    else:
        block = min(length_pow2, max_length)
        block_c = min(c_pow2, max(1, TILE // block))
    return block, block_c, 8 if block * block_c >= TILE else 4
