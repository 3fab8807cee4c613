"""DDP's gradient exchange options (engine.communication) on gloo, each against the plain DDP path of 2 processes:
bucket size and static graph bit for bit, bf16 compression within bf16's rounding; and what a run of one process
says when asked for them."""

import pytest
import torch

from fastp2p.engine import resolve_engine
from fastp2p.engine.path import REORDERED_FP32
from fastp2p.errors import OptionError
from fastp2p.options import parse_options
from tests.test_ddp import TINY_NETS, train_steps

PIX2PIX_BATCH = ["--model", "pix2pix", "--norm", "batch", "--seed", "11"]  # dropout on: each rank draws its masks
CYCLE_GAN = ["--model", "cycle_gan", "--pool_size", "2", "--seed", "11"]
PIX2PIX_INSTANCE = ["--model", "pix2pix", "--norm", "instance", "--seed", "11"]


def assert_identical(a, b):
    for name, state in a["nets"].items():
        for key, value in state.items():
            assert torch.equal(value, b["nets"][name][key]), f"{name}.{key}"


@pytest.mark.slow
@pytest.mark.parametrize("model", [PIX2PIX_BATCH, CYCLE_GAN], ids=["pix2pix", "cycle_gan"])
@pytest.mark.parametrize("option", [["--bucket_cap_mb", "0.01"], ["--static_graph", "on"]], ids=["buckets", "static"])
def test_bucket_size_and_static_graph_change_no_bit(tmp_path, model, option):
    """Tiny buckets (one all-reduce for a few layers) and a static graph sum each element as plain DDP does."""
    plain = train_steps(tmp_path / "plain", 3, 1, model, nproc=2)
    options = train_steps(tmp_path / "options", 3, 1, model + option, nproc=2)
    for rank in range(2):  # BatchNorm's running statistics are each rank's own
        assert_identical(options[rank], plain[rank])
    for name, settings in options[0]["ddp"].items():
        assert settings["gradient_as_bucket_view"]
        if option[0] == "--bucket_cap_mb":
            assert settings["bucket_bytes_cap"] == int(0.01 * 1024 * 1024) and not settings["static_graph"]
        else:
            assert settings["static_graph"] and settings["bucket_bytes_cap"] == plain[0]["ddp"][name]["bucket_bytes_cap"]


@pytest.mark.slow
def test_bf16_compression_is_plain_ddp_within_bf16_rounding(tmp_path):
    """bf16 keeps 8 significant bits (a relative 2**-9 per rounding; each rank's gradient and the sum are rounded).

    First-step gradients: within 1 % of their L2 norm, network by network (measured: 0.45 % for G, 0.25 % for D); a
    wrong reduction (a sum, or one rank's gradient alone) is off by 50 % or more. Weights after 3 Adam steps: Adam
    moves an element by about lr (2e-4) a step whatever its gradient's size, so elements whose gradient is at rounding
    level may step the other way (measured: at most 9.5e-4, 5 steps' worth); on average an element stays within lr / 4
    (measured: 1.8e-5), where one rank's gradient alone would move most elements by a step.
    """
    plain = train_steps(tmp_path / "plain", 3, 1, PIX2PIX_INSTANCE, nproc=2)[0]
    compressed = train_steps(tmp_path / "bf16", 3, 1, PIX2PIX_INSTANCE + ["--grad_compression", "bf16"], nproc=2)
    assert_identical(compressed[0], compressed[1])  # every rank applies the same averaged gradient
    assert {settings["comm_hook"] for settings in compressed[0]["ddp"].values()} == {"bf16_all_reduce"}
    assert all(settings["gradient_as_bucket_view"] for settings in compressed[0]["ddp"].values())
    for name, grads in plain["first_grads"].items():
        exact = torch.cat([g.flatten() for g in grads.values()])
        got = torch.cat([g.flatten() for g in compressed[0]["first_grads"][name].values()])
        error = float((got - exact).norm() / exact.norm())
        assert 0 < error < 1e-2, (name, error)
        gaps = torch.cat([(compressed[0]["nets"][name][key] - value).abs().flatten()
                          for key, value in plain["nets"][name].items() if value.is_floating_point()])
        assert float(gaps.max()) <= 6 * 2e-4 and float(gaps.mean()) <= 2e-4 / 4, (name, gaps.max(), gaps.mean())


@pytest.mark.slow
@pytest.mark.parametrize("model", [PIX2PIX_INSTANCE + ["--no_dropout"], CYCLE_GAN], ids=["pix2pix", "cycle_gan"])
def test_accumulated_steps_under_ddp_are_the_larger_batchs_steps(tmp_path, model):
    """--accum_steps 2 of 1 image per rank against --accum_steps 1 of 2 per rank on 2 gloo processes, from the same
    data: every rank ends with the same weights (the second micro-batch's all-reduce carries the first's gradients,
    kept local by no_sync), the first step's losses are the same, and its gradients too within fp32 reordering (the
    engine's REORDERED_FP32; tests/test_accumulation.py checks the same steps in float64 at 1e-10); a missing
    1/N weight or reduction would be off by 50 % or more."""
    plain = train_steps(tmp_path / "plain", 1, 2, model, nproc=2)
    accumulated = train_steps(tmp_path / "accum", 1, 2, model + ["--accum_steps", "2"], nproc=2)
    assert_identical(accumulated[0], accumulated[1])
    assert accumulated[0]["losses"][0] == pytest.approx(plain[0]["losses"][0], rel=1e-5)
    for name, grads in plain[0]["first_grads"].items():
        exact = torch.cat([g.flatten() for g in grads.values()])
        got = torch.cat([g.flatten() for g in accumulated[0]["first_grads"][name].values()])
        assert float((got - exact).norm() / exact.norm()) < REORDERED_FP32.grad_rel_l2, name


@pytest.mark.parametrize("flags", [["--grad_compression", "bf16"], ["--bucket_cap_mb", "50"],
                                   ["--static_graph", "on"]])
def test_one_process_refuses_ddp_options(flags):
    opt = parse_options(TINY_NETS + flags, is_train=True)
    with pytest.raises(OptionError, match="a single process has none"):
        resolve_engine(opt, torch.device("cpu"))


def test_auto_compresses_only_across_machines(monkeypatch):
    """auto: fp32 on one machine (NVLink is fast enough, docs/scaling.md) and on CPUs; bf16 for GPUs on several."""
    from fastp2p.engine.communication import GRAD_COMPRESSION

    class Here:
        def __init__(self, cuda, ddp, nodes):
            self.cuda, self.ddp, self.nodes = cuda, ddp, nodes

    assert GRAD_COMPRESSION.auto(Here(cuda=True, ddp=True, nodes=1)) == "fp32"
    assert GRAD_COMPRESSION.auto(Here(cuda=False, ddp=True, nodes=2)) == "fp32"
    assert GRAD_COMPRESSION.auto(Here(cuda=True, ddp=True, nodes=2)) == "bf16"
    opt = parse_options(TINY_NETS, is_train=True)
    assert resolve_engine(opt, torch.device("cpu")).grad_compression == "fp32"
