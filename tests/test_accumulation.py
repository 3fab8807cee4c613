"""--accum_steps: one optimizer step over N micro-batches against one step over their concatenation (per-sample norms),
dropout replayed in pix2pix's second phase, the paths that cannot take it, and an exact mid-epoch resume."""

import copy
import os
import random
import shutil

import pytest
import torch

from fastp2p import train as train_cli
from fastp2p.checkpoint import read_checkpoint, unwrap
from fastp2p.engine import resolve_engine
from fastp2p.engine.communication import STATIC_GRAPH
from fastp2p.engine.cuda_graph import CUDA_GRAPH
from fastp2p.engine.overlap import OVERLAP_OPTIMIZER
from fastp2p.engine.config import resolve_path
from fastp2p.engine.path import Situation
from fastp2p.errors import OptionError
from fastp2p.models.accumulation import MicroBatches
from fastp2p.options import parse_options
from tests.test_models import built_model, make_batches, make_opt
from tests.test_train_cli import aligned_root, pix2pix_flags  # noqa: F401 (fixture used by name)

# In float64, where the reordered sums of the micro-batches cannot hide a difference: in fp32 the InstanceNorms of
# small planes amplify the reordering to a few 1e-3 in some gradients (the engine's REORDERED_FP32 tolerance), while
# float64 leaves about 1e-15
EXACT = 1e-10


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def concatenated(batches):
    return {"A": torch.cat([b["A"] for b in batches]), "B": torch.cat([b["B"] for b in batches]),
            "A_paths": [p for b in batches for p in b["A_paths"]], "B_paths": [p for b in batches for p in b["B_paths"]]}


def gradients(net):
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def losses(model):
    return {name: float(value) for name, value in model.get_current_losses().items()}


def assert_steps_match(opt, steps=3, micro_batches=2):
    """Each step from the same weights, optimizer states, pools and RNG states: the losses and every network's
    gradient of the accumulated step equal those of one step over the concatenated batch. The weights are not
    compared: Adam turns the rounding noise of a gradient that is zero in exact arithmetic (a bias before an
    InstanceNorm) into a step of up to lr either way."""
    whole, accumulated = built_model(opt), built_model(opt)
    for step in range(steps):
        micro = make_batches(micro_batches, 1, 32, seed=step)
        for (_, source), (_, target) in zip(whole.networks(), accumulated.networks()):
            target.load_state_dict(source.state_dict())
        accumulated.load_training_state(copy.deepcopy(whole.training_state()))
        rng = random.getstate(), torch.get_rng_state()
        whole.set_input(concatenated(micro))
        whole.optimize_parameters()
        random.setstate(rng[0])
        torch.set_rng_state(rng[1])
        accumulated.optimize_accumulated(MicroBatches(accumulated, micro))
        expected, got = losses(whole), losses(accumulated)
        assert got == pytest.approx(expected, rel=EXACT), step
        for (name, a), (_, b) in zip(whole.networks(), accumulated.networks()):
            error = (gradients(a) - gradients(b)).norm() / gradients(a).norm()
            assert error < EXACT, (step, name, float(error))


def test_pix2pix_accumulated_step_is_one_step_at_the_larger_batch(tmp_path, float64):
    assert_steps_match(make_opt(tmp_path, norm="instance", no_dropout=True, netG="resnet_6blocks", accum_steps=2))


def test_cycle_gan_accumulated_step_is_one_step_at_the_larger_batch_pools_included(tmp_path, float64):
    # a pool of 3 is full after the second step, so later steps swap stored fakes: the draws must come in the order
    # of one query over the larger batch (D_A's micro-batches before D_B's)
    assert_steps_match(make_opt(tmp_path, model="cycle_gan", pool_size=3, ngf=8, ndf=8, accum_steps=2), steps=4)


def test_pix2pix_replays_dropout_and_counts_each_micro_batch_once_in_batchnorm(tmp_path):
    model = built_model(make_opt(tmp_path, accum_steps=2))  # unet_128 with BatchNorm and dropout
    fakes = []
    unwrap(model.netG).register_forward_hook(lambda module, inputs, output: fakes.append(output.detach().clone()))
    model.optimize_accumulated(MicroBatches(model, make_batches(2, 1, 128)))
    first_phase, second_phase = fakes[:2], fakes[2:]
    assert len(second_phase) == 2
    for before, again in zip(first_phase, second_phase):
        assert torch.equal(before, again)  # the same dropout masks: G's loss is of the fake D was trained on
    tracked = [buffer for name, buffer in unwrap(model.netG).named_buffers() if name.endswith("num_batches_tracked")]
    assert tracked and all(int(count) == 2 for count in tracked)


def test_accum_steps_one_runs_the_plain_step(tmp_path):
    from fastp2p.engine import EngineConfig, prepare_model
    from fastp2p.engine.step import AccumulatedStep, TrainStep

    for steps, kind in ((1, TrainStep), (2, AccumulatedStep)):
        model = built_model(make_opt(tmp_path, accum_steps=steps))
        assert type(prepare_model(model, EngineConfig())) is kind


def cpu_situation(**changes):
    values = dict(cuda=True, bf16=lambda: True, triton=True, interpreter=False, ddp=True, nodes=1, model="pix2pix",
                  norm="instance", training=True, accum_steps=2, own_optimizers=False, asked=lambda name: "auto",
                  value=lambda name: None)
    values.update(changes)
    return Situation(**values)


@pytest.mark.parametrize("path", [CUDA_GRAPH, OVERLAP_OPTIMIZER, STATIC_GRAPH])
def test_paths_that_cannot_take_accumulation_are_refused_on_and_off_under_auto(path):
    # on a GPU, in one process (cuda_graph's auto is on there) or under DDP for its static graph
    ddp = path is STATIC_GRAPH
    with pytest.raises(OptionError, match=rf"^--{path.name} on is not possible here: .*--accum_steps [^;]*$"):
        resolve_path(path, "on", cpu_situation(ddp=ddp))
    assert resolve_path(path, "auto", cpu_situation(ddp=ddp)) is False
    assert resolve_path(path, "on", cpu_situation(ddp=ddp, accum_steps=1)) is True
    if path is CUDA_GRAPH:
        assert resolve_path(path, "auto", cpu_situation(ddp=False, accum_steps=1)) is True


def test_overlap_optimizer_with_accumulation_is_one_line_on_the_cpu(tmp_path):
    opt = parse_options(["--model", "pix2pix", "--gpu_ids", "-1", "--accum_steps", "2", "--overlap_optimizer", "on",
                         "--checkpoints_dir", str(tmp_path)], is_train=True)
    with pytest.raises(OptionError, match="--accum_steps steps once") as error:
        resolve_engine(opt, torch.device("cpu"))
    assert "\n" not in str(error.value)


def test_a_model_without_an_accumulated_step_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["--model", "template", "--gpu_ids", "-1", "--accum_steps", "2", "--checkpoints_dir",
                       str(tmp_path)], is_train=True)
    assert exit_info.value.code == 2
    assert "--accum_steps 2: --model template takes one optimizer step per batch" in capsys.readouterr().err


def iterations_logged(folder):
    with open(os.path.join(folder, "loss_log.txt")) as log:
        return [line.split(", time")[0] for line in log if line.startswith("(epoch")]


@pytest.mark.slow
def test_a_mid_epoch_resume_with_accumulation_ends_as_the_uninterrupted_run(tmp_path, aligned_root):  # noqa: F811
    # 6 pairs, 2 micro-batches of 1 a step: 3 steps an epoch, 'iter_N' saved after every step (N in images)
    flags = pix2pix_flags(tmp_path, aligned_root, name="acc") + [
        "--norm", "instance", "--accum_steps", "2", "--save_latest_freq", "2", "--save_by_iter"]
    assert train_cli.main(flags) == 0
    whole = tmp_path / "checkpoints" / "acc"
    assert iterations_logged(whole) == ["(epoch: 1, iters: 2", "(epoch: 1, iters: 4", "(epoch: 1, iters: 6",
                                        "(epoch: 2, iters: 2", "(epoch: 2, iters: 4", "(epoch: 2, iters: 6"]
    assert {f"iter_{n}_net_G.pth" for n in range(2, 13, 2)} <= set(os.listdir(whole))  # a save after every step
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "checkpoints", resumed_dir)
    resumed = resumed_dir / "acc"
    for name in os.listdir(resumed):  # what the run wrote after iter_4, as if it had been killed there
        if name.startswith(("latest_", "1_", "2_", "iter_")) and not name.startswith(("iter_2_", "iter_4_")):
            os.remove(resumed / name)
    flags[flags.index("--checkpoints_dir") + 1] = str(resumed_dir)
    assert train_cli.main(flags + ["--continue_train", "--epoch", "iter_4"]) == 0
    for net in ("G", "D"):
        a = read_checkpoint(str(whole / f"latest_net_{net}.pth"))
        b = read_checkpoint(str(resumed / f"latest_net_{net}.pth"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (net, key)


def test_the_self_check_of_an_accumulating_run_checks_its_paths_per_batch(tmp_path):
    from fastp2p import parity
    from fastp2p.engine import EngineConfig

    opt = parse_options(["--model", "pix2pix", "--gpu_ids", "-1", "--accum_steps", "2", "--ngf", "4", "--ndf", "4",
                         "--netG", "unet_128", "--crop_size", "128", "--load_size", "128", "--checkpoints_dir",
                         str(tmp_path)], is_train=True)
    assert parity.check_options(opt).accum_steps == 1
    verdict, _, _ = parity.check_training(opt, EngineConfig(), torch.device("cpu"), EngineConfig())
    assert verdict.ok, verdict.why
