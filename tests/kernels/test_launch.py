"""The host-side grid helpers agree with Triton's own, which they replace for speed (see kernels/launch.py); the
last-to-finish counters are shared along a stream and kept alive."""

import torch
import triton

from fastp2p.kernels.launch import cdiv, next_power_of_2, tickets
from tests.conftest import requires_cuda


def test_cdiv_and_next_power_of_2_match_triton():
    for n in range(0, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for block in (1, 3, 16, 64, 128, 4096):
            assert cdiv(n, block) == triton.cdiv(n, block), (n, block)


def test_tickets_are_zeroed_shared_and_kept_when_a_larger_set_is_needed():
    device = torch.device("cpu")
    first = tickets(device, 10)
    assert first.dtype == torch.int32 and first.numel() >= 10 and not first.any()
    assert tickets(device, 5) is first
    larger = tickets(device, first.numel() + 1)
    assert larger is not first and larger.numel() > first.numel() and tickets(device, 1) is larger


@requires_cuda
def test_each_stream_has_its_own_tickets():
    """Two streams' kernels run at once (--two_streams): counters shared between them would mix their arrivals."""
    device = torch.device("cuda", torch.cuda.current_device())
    here = tickets(device, 8)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        there = tickets(device, 8)
        assert tickets(device, 8) is there
    assert there.data_ptr() != here.data_ptr() and tickets(device, 8) is here
