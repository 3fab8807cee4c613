"""Launch-size heuristics shared by the kernels (no autotuning: it does not run in Triton's interpreter).

Host-side grid arithmetic uses the plain integer helpers here: triton.cdiv and triton.next_power_of_2 are
constexpr functions whose Python wrapper costs about 2 us per call (1.9 us against 0.06 us on this project's CPU
machine), and a norm layer's forward and backward make about twenty such calls, on the host's critical path in
eager mode (a fifth of the layer's host time there).
"""

import functools

import torch


@functools.cache
def target_programs(device, waves=4):
    """Programs worth launching for a split reduction: `waves` per SM on a GPU, a handful in the interpreter."""
    if device.type == "cuda":
        return waves * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def cdiv(a, b):
    return -(-a // b)


def next_power_of_2(n):
    """The smallest power of 2 >= n (0 for n <= 0, as triton.next_power_of_2)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
