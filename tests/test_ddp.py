"""DDP on the CPU (gloo): two processes under ``python -m torch.distributed.run``, each test one launch or two.

Through the CLI: runs finish, rank 0 alone writes logs and checkpoints, and the checkpoints load in one
process. Through the library API (tests/ddp_worker.py): ranks keep identical weights, and 2 processes
at batch b train as 1 process at batch 2b where the math says they must. A crashing rank ends the run.
"""

import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from fastp2p import networks
from fastp2p.checkpoint import load_network, read_checkpoint
from fastp2p.data.loader import shard_indices
from tests.test_train_cli import cycle_gan_flags, pix2pix_flags
from tests.test_train_cli import aligned_root, unaligned_root  # noqa: F401,F811 (pytest fixtures)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")
TINY_NETS = ["--gpu_ids", "-1", "--ngf", "8", "--ndf", "8", "--netG", "resnet_6blocks"]


def launch(args, nproc=2, env=None, timeout=120):
    """``python -m torch.distributed.run --standalone`` (a free port of its own) with one thread a process."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(launcher + args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def train_steps(out, steps, batch, flags, nproc):
    """Run the worker's ``steps`` mode; returns each rank's saved nets, losses and first gradients."""
    os.makedirs(out, exist_ok=True)
    args = [str(out), str(steps), str(batch), *TINY_NETS, "--checkpoints_dir", str(out), *flags]
    if nproc == 1:  # a plain process, no process group: the single-process reference
        result = subprocess.run([sys.executable, WORKER, "steps", *args], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}, timeout=120)
    else:
        result = launch([WORKER, "steps", *args], nproc=nproc)
    assert_ok(result)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(nproc)]


def loss_lines(run_dir):
    with open(os.path.join(run_dir, "loss_log.txt")) as f:
        return [line for line in f if line.startswith("(epoch:")]


def assert_loads_in_one_process(run_dir, nets):
    """The reference's key layout (no ``module.``), loading strictly into freshly built networks."""
    for name, net in nets.items():
        path = os.path.join(run_dir, f"latest_net_{name}.pth")
        assert not [key for key in read_checkpoint(path) if key.startswith("module.")], path
        load_network(net, path)


@pytest.mark.slow
def test_pix2pix_batchnorm_through_the_cli(tmp_path, aligned_root):
    """--norm batch: D runs twice before one backward in the D step, which a buffer sync in forward breaks."""
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 1)) + ["--batch_size", "2", "--norm", "batch"]
    result = launch(["-m", "fastp2p.train", *flags])
    assert_ok(result)
    run_dir = tmp_path / "checkpoints" / "p2p"
    # 6 images / 2 ranks / batch 2 = 2 steps per rank and epoch, counted as 4 images; --print_freq 2:
    # one rank's log has 2 lines an epoch, both ranks writing would double them.
    assert len(loss_lines(run_dir)) == 4
    for line in ("engine: fp32, ddp", "The number of training images = 6", "learning rate 0.0002000 -> "):
        assert result.stdout.count(line) == 1, f"{line!r} printed by other ranks too:\n{result.stdout}"
    assert {"1_net_G.pth", "2_net_D.pth", "latest_train_state.pth"} <= set(os.listdir(run_dir))
    rng = read_checkpoint(str(run_dir / "latest_train_state.pth"))["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank's own draws
    assert_loads_in_one_process(run_dir, {
        "G": networks.define_G(3, 3, 8, "resnet_6blocks", "batch", use_dropout=True),
        "D": networks.define_D(6, 8, "basic", 3, "batch")})


@pytest.mark.slow
def test_cycle_gan_through_the_cli(tmp_path, unaligned_root):
    result = launch(["-m", "fastp2p.train", *cycle_gan_flags(tmp_path, unaligned_root)])
    assert_ok(result)
    run_dir = tmp_path / "checkpoints" / "cyc"
    assert len(loss_lines(run_dir)) == 2  # 2 images a rank and epoch, --print_freq 2, 2 epochs
    g = {name: networks.define_G(3, 3, 8, "resnet_6blocks", "instance", use_dropout=False) for name in ("G_A", "G_B")}
    d = {name: networks.define_D(3, 8, "basic", 3, "instance") for name in ("D_A", "D_B")}
    assert_loads_in_one_process(run_dir, {**g, **d})


@pytest.mark.parametrize("flags", [
    ["--model", "pix2pix", "--norm", "batch"],  # dropout on: the ranks draw different masks
    ["--model", "cycle_gan", "--pool_size", "2"],
    ["--model", "cycle_gan", "--pool_size", "2", "--batch_passes", "on"],  # a DDP net called at two batch sizes
    ["--model", "cycle_gan", "--pool_size", "2", "--amp", "bf16", "--foreach_cast", "on"],  # hooks inside DDP
    ["--model", "pix2pix", "--norm", "instance", "--amp", "bf16", "--step_cast", "on"],  # copies under DDP
], ids=["pix2pix-batchnorm", "cycle_gan", "cycle_gan-batch_passes", "cycle_gan-foreach_cast", "pix2pix-step_cast"])
@pytest.mark.slow
def test_ranks_keep_identical_weights(tmp_path, flags):
    """Each rank trains on other images; averaged gradients keep every parameter bit-identical."""
    ranks = train_steps(tmp_path / "run", 3, 1, flags + ["--seed", "11"], nproc=2)
    for name, state in ranks[0]["nets"].items():
        for key, value in state.items():
            other = ranks[1]["nets"][name][key]
            if "running_" in key:  # BatchNorm statistics stay per rank by design (no buffer broadcast)
                assert not torch.equal(value, other), f"{name}.{key} was synced"
            else:
                assert torch.equal(value, other), f"{name}.{key} differs between ranks"


def test_sharding_splits_the_single_process_batch():
    """Rank r takes every world-th index of the epoch's order: the ranks' first batches of b are the
    single process's first batch of 2b (what the equivalence test below feeds its worker)."""
    b = 3
    shards = [shard_indices(20, epoch=2, seed=5, shuffle=True, rank=r, world_size=2)[:b] for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(shard_indices(20, epoch=2, seed=5, shuffle=True)[:2 * b])


def biases_before_instance_norm(net):
    """Biases of layers directly followed by an InstanceNorm, which removes them from the output."""
    names = set()
    for prefix, module in net.named_modules():
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if isinstance(following, nn.InstanceNorm2d) and getattr(layer, "bias", None) is not None:
                names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names


@pytest.mark.slow
def test_two_processes_at_b_match_one_process_at_2b(tmp_path):
    """Instance norm is per sample and dropout is off, so the mean loss over 2b images is the average of
    two ranks' means over b, and DDP's averaged gradient is the single process's gradient.

    Only fp32 summation order differs, hence the tolerances:
    - first-step gradients: rtol 1e-4 plus 1e-6 of the network's largest entry (Adam is scale-invariant,
      so this is the check that catches a summed instead of averaged gradient);
    - per-step losses (mean of the ranks' losses): rtol 1e-4, atol 1e-5;
    - weights after 3 Adam steps: rtol 1e-4, atol 5e-5 = lr / 4. Adam moves an element by about lr
      whatever its gradient's size, so an element whose gradient is at rounding level can move
      differently in the two runs (observed: < 1.5e-5); a wrong gradient moves most elements by ~lr.
      Conv biases right before an InstanceNorm are left out: their exact gradient is zero, so Adam turns
      rounding noise into steps of ~lr that differ between the runs (and never reach the output).
    """
    flags = ["--model", "pix2pix", "--norm", "instance", "--no_dropout", "--gan_mode", "lsgan", "--seed", "7"]
    two = train_steps(tmp_path / "two", 3, 2, flags, nproc=2)
    one = train_steps(tmp_path / "one", 3, 4, flags, nproc=1)[0]

    for step, single in enumerate(one["losses"]):
        for name, value in single.items():
            mean = (two[0]["losses"][step][name] + two[1]["losses"][step][name]) / 2
            assert mean == pytest.approx(value, rel=1e-4, abs=1e-5), (step, name)
    inert = {
        "G": biases_before_instance_norm(networks.define_G(3, 3, 8, "resnet_6blocks", "instance", False)),
        "D": biases_before_instance_norm(networks.define_D(6, 8, "basic", 3, "instance")),
    }
    assert inert["G"] and inert["D"]
    for name, state in one["nets"].items():
        atol = 1e-6 * max(float(g.abs().max()) for g in one["first_grads"][name].values())
        for key, expected in state.items():
            grad = one["first_grads"][name][key]
            for rank in two:
                torch.testing.assert_close(rank["first_grads"][name][key], grad, rtol=1e-4, atol=atol)
                assert torch.equal(rank["nets"][name][key], two[0]["nets"][name][key])
            if key not in inert[name]:
                torch.testing.assert_close(two[0]["nets"][name][key], expected, rtol=1e-4, atol=5e-5)


@pytest.mark.slow
def test_syncbatch_on_cpu_is_a_clear_error(tmp_path, aligned_root):
    """torch's SyncBatchNorm syncs GPU tensors only; fastp2p says so before training starts."""
    flags = pix2pix_flags(tmp_path, aligned_root) + ["--norm", "syncbatch"]
    result = launch(["-m", "fastp2p.train", *flags])
    assert result.returncode != 0
    assert "--norm syncbatch needs GPUs under DDP" in result.stderr


@pytest.mark.slow
def test_a_failing_rank_ends_the_run(tmp_path, aligned_root):
    """Rank 1 raises in its second step while rank 0 waits in a gradient all-reduce: torchrun must
    return non-zero soon, not hang."""
    start = time.monotonic()
    result = launch([WORKER, "cli", *pix2pix_flags(tmp_path, aligned_root)], env={"FASTP2P_TEST_FAIL_RANK": "1"})
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stdout + result.stderr
    assert time.monotonic() - start < 60
