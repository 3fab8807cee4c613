"""Every fast path that runs on this device trains like the plain path, loss by loss and weight by weight, at the
tolerance its declaration states (engine.registry): one path at a time, and the default fast path (the paths 'auto'
turns on for a GPU) all together. On the CPU the Triton paths run in Triton's interpreter."""

import pytest
import torch
from torch._dynamo.utils import counters as dynamo_counters

from fastp2p.engine import resolve_engine
from fastp2p.engine.path import AUTOCAST_VALUES, LOW_PRECISION
from fastp2p.engine.registry import PATHS
from fastp2p.errors import OptionError
from tests.engine.helpers import DEVICE, NO_POOL, OFF, STEPS, assert_same_training, make_opt, train_steps

CPU = DEVICE.type == "cpu"
RUNNABLE = [path for path in PATHS if path.check is not None and (path.check.cpu or not CPU)]
# CycleGAN's Triton paths on the CPU, at a size Triton's interpreter runs in a minute or two (its time goes by
# programs, hardly by tensor size): 2 filters, 24 x 24 images, a 2-layer PatchGAN, no identity passes (the same
# generators a third time), against its own reference at that size. Every fused pattern still runs (norm + ReLU, the
# blocks' skip adds and pads written by the norms, the 3-pixel output pad, the fused losses). Not 16 x 16: there the
# InstanceNorms over 4 x 4 and 3 x 3 planes amplify rounding past the tolerances.
# The paths whose CPU check runs whole networks through Triton's interpreter or through torch.compile's CPU
# compiler (tens of seconds a case): the full suite runs them, `-m "not slow"` leaves them out, with the default
# fast path, which holds them.
SLOW_ON_CPU = {"fused_kernels", "adam_moments", "fused_conv", "compile"}
CPU_SMALL = (["--ngf", "2", "--ndf", "2", "--netD", "n_layers", "--n_layers_D", "2", "--lambda_identity", "0"], 24)


def cases():
    """(model, the flags of the paths checked, the baseline's flags, tolerance) of every path here alone (against the
    plain path with the flags it needs: a weight cast against plain autocast), and of the default fast path (against
    the plain path in its precision), where the model allows them (batched passes need per-sample norms, which
    pix2pix's BatchNorm is not)."""
    found = []
    for model in ("pix2pix", "cycle_gan"):
        for path in RUNNABLE:
            needs, flags = list(path.check.needs), [*path.check.needs, *path.on_flags()]
            if runs_here(model, flags):
                found.append(pytest.param(model, flags, needs, path.check.tolerance, id=f"{model}-{path.name}",
                                          marks=slow_here(path.name in SLOW_ON_CPU)))
        paths = [path for path in default_fast_path(model) if path.name != "amp"]
        flags = ["--amp", "bf16"] + [flag for path in paths for flag in path.on_flags()]
        # run in bf16: no tighter than autocast's own rounding
        loosest = max([AUTOCAST_VALUES, *(path.check.tolerance for path in paths)],
                      key=lambda tolerance: tolerance.weight_atol)
        found.append(pytest.param(model, flags, ["--amp", "bf16"], loosest, id=f"{model}-default_fast_path",
                                  marks=slow_here(True)))
    return found


def slow_here(slow_on_cpu):
    return [pytest.mark.slow] if CPU and slow_on_cpu else []


def test_the_slow_paths_are_paths():
    """A renamed path cannot silently leave its slow case in the quick loop."""
    assert SLOW_ON_CPU <= {path.name for path in PATHS}


def runs_here(model, flags):
    try:
        resolve_engine(make_opt(model, *OFF, *flags), DEVICE)
        return True
    except OptionError:
        return False


def default_fast_path(model):
    """The paths 'auto' turns on for ``model`` on a GPU (--amp bf16 avoids asking the device about bf16) that can
    run here, each where it can run beside the others."""
    on = resolve_engine(make_opt(model, "--amp", "bf16"), torch.device("cuda")).on()
    chosen = []
    for path in RUNNABLE:
        if path.name in on and runs_here(model, [flag for p in chosen + [path] for flag in p.on_flags()]):
            chosen.append(path)
    return chosen


@pytest.mark.parametrize("model_name, flags, baseline, tolerance", cases())
def test_fast_path_trains_like_the_reference(model_name, flags, baseline, tolerance, request):
    small = CPU and model_name == "cycle_gan" and ("--fused_kernels" in flags or "--fused_conv" in flags)
    dynamo_counters.clear()
    if small:
        extra, image_size = CPU_SMALL
        reference = train_steps(model_name, OFF + extra + baseline, STEPS, image_size=image_size)
        run = train_steps(model_name, OFF + extra + flags, STEPS, image_size=image_size)
    else:
        reference = (train_steps(model_name, OFF + baseline, STEPS) if baseline else
                     request.getfixturevalue("reference_runs")[model_name])
        run = train_steps(model_name, OFF + flags, STEPS)
    if "--compile" in flags:  # TorchDynamo must really have captured the networks
        assert dynamo_counters["stats"]["unique_graphs"] > 0
        torch._dynamo.reset()
    assert_same_training(run, reference, *tolerance.limits(), tolerance.weight_share, tolerance.weight_rtol)


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
@pytest.mark.parametrize("fused_adam", [False, True], ids=["adam", "fused_adam"])
def test_fp16_with_grad_scaler_trains_like_the_reference(model_name, fused_adam, reference_runs, monkeypatch):
    """fp16 autocast with the GradScaler, the path of GPUs without bf16; on the CPU by setting the config directly
    (--amp fp16 asks for a GPU). The scaler starts at 2**8, where these small nets' scaled gradients stay finite,
    and doubles after every step: its final scale shows one update per iteration and no skipped step, so the run
    must follow the reference. (At its default 2**16 it skips the first steps, as designed, and the runs part.)"""
    scalers = []

    class RecordingScaler(torch.amp.GradScaler):
        def __init__(self, device, enabled=True):
            super().__init__(device, init_scale=2.0**8, growth_interval=1, enabled=enabled)
            scalers.append(self)

    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    run = train_steps(model_name, OFF, STEPS, amp=torch.float16, fused_adam=fused_adam)
    assert [scaler.get_scale() for scaler in scalers] == [2.0 ** (8 + STEPS)]
    assert_same_training(run, reference_runs[model_name], *LOW_PRECISION.limits())


# Under CUDA graphs CycleGAN's image pool draws on the device (DeviceImagePool, tested on its own in
# test_cuda_graph), not from python's random as the reference does; the step-by-step comparisons use no pool.
@pytest.mark.skipif(CPU, reason="needs a CUDA device")
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_full_fast_path_on_cuda_stays_near_the_reference(model_name):
    run = train_steps(model_name, NO_POOL + ["--amp", "bf16", "--channels_last", "on", "--fused_kernels", "on",
                                             "--fused_adam", "on", "--cuda_graph", "on"], STEPS + 6)
    reference = train_steps(model_name, OFF + NO_POOL, STEPS + 6)
    assert_same_training(run, reference, 5e-2, 5e-2, 5e-3)
