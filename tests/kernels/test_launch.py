"""The host-side grid helpers agree with Triton's own, which they replace for speed (see kernels/launch.py)."""

import triton

from fastp2p.kernels.launch import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    for n in range(0, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for block in (1, 3, 16, 64, 128, 4096):
            assert cdiv(n, block) == triton.cdiv(n, block), (n, block)
