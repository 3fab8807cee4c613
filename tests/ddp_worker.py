"""One process of a DDP test, started by tests/test_ddp.py under ``python -m torch.distributed.run``.

``cli ARGS...``: ``fastp2p.train.main(ARGS)``; with FASTP2P_TEST_FAIL_RANK set, that rank raises in its
second training step (a crashing rank, injected here and not in the product). With FASTP2P_TEST_KILL=RANK:WHERE:N
that rank kills itself (SIGKILL) in the first run of the job only (not after a torchrun restart), at one of these
instants: ``iteration`` between the D and G steps of its N-th iteration, ``save`` after the first file of its N-th
checkpoint set and before the set commits, ``commit`` after its N-th set committed, before its files are renamed.

``steps OUT STEPS BATCH ARGS...``: build the model through the library API (parse_options,
create_model, setup, prepare_model) and train STEPS steps on fixed global batches of
``world_size * BATCH`` synthetic pairs. Rank r takes rows r, r + world, ... of each global batch,
the interleaving of ``fastp2p.data.loader.shard_indices``, so one process at 2b sees exactly the union
of two processes at b. Each rank writes OUT/rank<r>.pt: its networks' state_dicts, per-step losses, first gradients
and the settings of each network's DDP.
"""

import os
import signal
import sys

import torch

from fastp2p import checkpoint_sets, distributed
from fastp2p import train as train_cli
from fastp2p.checkpoint import network_state_dict, unwrap
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.models import BaseModel, create_model
from fastp2p.options import parse_options
from fastp2p.resume import seed_everything


def inject_failure():
    fail_rank = os.environ.get("FASTP2P_TEST_FAIL_RANK")
    rank = int(os.environ["RANK"])  # the process group does not exist yet
    if fail_rank is None or int(fail_rank) != rank:
        return
    step = BaseModel.step
    calls = []

    def failing_step(self, optimizer):
        calls.append(optimizer)
        if len(calls) > 2:  # D and G stepped once: fail in the second iteration
            raise RuntimeError(f"injected failure on rank {rank}")
        step(self, optimizer)

    BaseModel.step = failing_step


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def after_calls(function, count, action):
    """``function`` that runs ``action`` at the start of its ``count``-th call."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(None)
        if len(calls) == count:
            action()
        return function(*args, **kwargs)
    return counted


def inject_kill():
    kill = os.environ.get("FASTP2P_TEST_KILL")
    if kill is None or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        return
    rank, where, count = kill.split(":")
    if int(rank) != int(os.environ["RANK"]):
        return
    count = int(count)
    if where == "iteration":  # the D step of iteration N has run, its G step not
        BaseModel.step = after_calls(BaseModel.step, 2 * count, kill_self)
    elif where == "save":  # the first file of the set is staged (the first save of a set is its first network)
        saves = []
        original = checkpoint_sets.CheckpointSet.save

        def save(self, name, obj):
            digest = original(self, name, obj)
            saves.append(self.token)
            if len(set(saves)) == count:
                kill_self()
            return digest
        checkpoint_sets.CheckpointSet.save = save
    elif where == "commit":  # the journal is in place, the staged files not yet renamed to their names
        checkpoint_sets.roll_forward = after_calls(checkpoint_sets.roll_forward, count, kill_self)
    else:
        raise ValueError(f"FASTP2P_TEST_KILL: no instant {where!r}")


def global_batch(step, size):
    generator = torch.Generator().manual_seed(1000 + step)
    return {name: torch.rand(size, 3, 32, 32, generator=generator) * 2 - 1 for name in ("A", "B")}


def micro_batches(data, accum_steps):
    """A rank's batch as it is (``--accum_steps 1``), else split into ``accum_steps`` consecutive micro-batches."""
    if accum_steps == 1:
        return data
    size = len(data["A"]) // accum_steps
    return [{name: value[i * size:(i + 1) * size] for name, value in data.items()} for i in range(accum_steps)]


def ddp_settings(net):
    """What a DDP-wrapped network was built with (what engine.communication asked for)."""
    return dict(bucket_bytes_cap=net.bucket_bytes_cap, static_graph=net.static_graph,
                gradient_as_bucket_view=net.gradient_as_bucket_view,
                comm_hook=net._get_ddp_logging_data().get("comm_hook"))


def run_steps(out, steps, batch, argv):
    opt = parse_options(argv, is_train=True)
    device = distributed.init_distributed(use_cuda=False)
    rank, world = distributed.rank(), distributed.world_size()
    seed_everything(opt.seed + rank)  # as the trainer seeds (the image pools draw from random): DDP must make rank
    # 0's init everyone's
    config = resolve_engine(opt, device)
    model = create_model(opt, runtime_for(config, device))
    model.setup(opt)
    train_step = prepare_model(model, config)
    losses, first_grads = [], None
    for step in range(steps):
        data = {name: images[rank::world] for name, images in global_batch(step, batch * world).items()}
        data["A_paths"] = data["B_paths"] = [""] * batch
        train_step(micro_batches(data, opt.accum_steps))
        losses.append(model.get_current_losses())
        if first_grads is None:
            first_grads = {name: {key: p.grad.clone() for key, p in unwrap(net).named_parameters()}
                           for name, net in model.networks()}
    nets = {name: network_state_dict(net) for name, net in model.networks()}
    ddp = {name: ddp_settings(net) for name, net in model.networks() if net is not unwrap(net)}
    torch.save({"nets": nets, "losses": losses, "first_grads": first_grads, "ddp": ddp},
               os.path.join(out, f"rank{rank}.pt"))
    distributed.cleanup_distributed()


def main(argv):
    if argv[0] == "cli":
        inject_failure()
        inject_kill()
        return train_cli.main(argv[1:])
    out, steps, batch, *rest = argv[1:]
    run_steps(out, int(steps), int(batch), rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
