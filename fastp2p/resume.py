"""The resume decision: which checkpoint set a ``--continue_train`` run continues from, and the RNG and seed state
that makes it continue exactly.

Beyond the reference's network files, each ``latest`` and ``iter_<n>`` set holds a training state (optimizers,
schedulers, image pools, counters, RNG states) and the SHA-256 of each network file of the set. A resume takes the
set --epoch/--load_iter name when it is complete, else the complete set that trained furthest, and says which;
without a training state it loads the weights alone, as the reference does. Under torchrun the decision is taken
once, on rank 0, and every rank follows it; a worker that torchrun restarted (--max-restarts) resumes from the
newest complete set without --continue_train.
"""

import os
import random
import secrets
from dataclasses import dataclass

import torch

from fastp2p import distributed
from fastp2p.checkpoint import file_digest, load_prefix, network_filename, read_checkpoint, training_state_filename
from fastp2p.errors import CheckpointError

STATE_KEYS = ("seed", "epoch", "epoch_iter", "total_iters", "model", "rng")
STATE_SUFFIX = training_state_filename("")


def read_training_state(folder, prefix):
    """(state, None) for a complete checkpoint set ``prefix`` in ``folder``, or (None, what is wrong with it).

    Complete: the training state reads, has every key, and each network file has the SHA-256 the state recorded
    when the set was written (a file replaced since, by hand or by another program, breaks the set)."""
    try:
        state = read_checkpoint(os.path.join(folder, training_state_filename(prefix)))
    except CheckpointError as error:
        return None, str(error)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        return None, f"its training state lacks {', '.join(missing)}"
    malformed = malformed_keys(state)
    if malformed:
        return None, f"its training state has values of a layout fastp2p never writes ({', '.join(malformed)})"
    for name, digest in state.get("networks", {}).items():  # absent in states of fastp2p before sets: unchecked
        path = os.path.join(folder, network_filename(prefix, name))
        if not os.path.isfile(path):
            return None, f"{os.path.basename(path)} is missing"
        if file_digest(path) != digest:
            return None, f"{os.path.basename(path)} is not the file saved with its training state"
    return state, None


def has_network_files(folder, prefix):
    """Whether ``folder`` holds a network file of ``prefix`` (``latest_net_G.pth``: any network)."""
    start = network_filename(prefix, "").removesuffix(".pth")
    return os.path.isdir(folder) and any(entry.startswith(start) for entry in os.listdir(folder))


def malformed_keys(state):
    """The keys of a training state (read from a folder that may come from elsewhere) whose values are not of the
    layout fastp2p writes; what is inside the optimizer and pool states is checked where the model loads them."""
    def counter(value, least):
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    model = state["model"]
    checks = {
        "seed": counter(state["seed"], -(2**63)),
        "epoch": counter(state["epoch"], 1),
        "epoch_iter": counter(state["epoch_iter"], 0),
        "total_iters": counter(state["total_iters"], 0),
        "model": isinstance(model, dict) and isinstance(model.get("optimizers"), list)
        and isinstance(model.get("image_pools"), dict) and isinstance(model.get("schedulers"), list)
        and all(isinstance(saved, dict) and counter(saved.get("last_epoch"), 0) for saved in model["schedulers"]),
        "rng": isinstance(state["rng"], list) and bool(state["rng"]) and all(isinstance(r, dict) for r in state["rng"]),
        "networks": isinstance(state.get("networks", {}), dict)
        and all(isinstance(name, str) and isinstance(digest, str) for name, digest in state.get("networks", {}).items()),
    }
    return [key for key, fits in checks.items() if not fits]


def newest_complete_set(folder, exclude):
    """The complete set with a training state that has trained furthest, other than ``exclude``: (prefix, state)."""
    found = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        prefix = entry[: -len(STATE_SUFFIX)] if entry.endswith(STATE_SUFFIX) and not entry.startswith(".") else None
        if prefix and prefix != str(exclude):
            state, _ = read_training_state(folder, prefix)
            if state is not None:
                found.append((state["total_iters"], prefix, state))
    return max(found, key=lambda item: item[0])[1:] if found else (None, None)


@dataclass(frozen=True)
class ResumePoint:
    """The set a run resumes from exactly: its prefix (whose weights are loaded) and its training state."""

    prefix: str
    state: dict

    def began(self):
        """The epoch the saved run began at: its epoch less the schedule steps it took."""
        schedulers = self.state["model"]["schedulers"]
        return self.state["epoch"] - (schedulers[0]["last_epoch"] if schedulers else 0)


def find_resume_point(opt, folder):
    """With --continue_train, the complete checkpoint set to resume from exactly, if any (see the module doc)."""
    if not opt.continue_train:
        return None
    wanted = load_prefix(opt)
    path = os.path.join(folder, training_state_filename(wanted))
    if os.path.isfile(path):
        state, problem = read_training_state(folder, wanted)
    elif has_network_files(folder, wanted):
        distributed.print_main(f"no training state at {path}: loading network weights only and starting at "
                               f"--epoch_count {opt.epoch_count}, as the reference trainer does")
        return None
    else:  # never written: a --save_by_iter run stopped before its first 'latest' has iter_<n> sets alone
        state, problem = None, "no file of it is there"
    prefix = wanted
    if problem:
        prefix, state = newest_complete_set(folder, exclude=wanted)
        if state is None:
            raise CheckpointError(f"cannot resume from '{wanted}' in {folder}: {problem}, and no other complete "
                                  f"checkpoint set with a training state is there")
        distributed.print_main(f"'{wanted}' is not a complete checkpoint set ({problem}): resuming from '{prefix}' "
                               f"instead, the complete set that trained furthest")
    if "networks" not in state:
        distributed.print_main(f"'{prefix}' was saved by an earlier fastp2p, without the digests that tie its network "
                               f"files to its training state: they are taken as they are")
    distributed.print_main(f"resuming exactly from '{prefix}' in {folder}: epoch {state['epoch']}, "
                           f"{state['epoch_iter']} images into it")
    return ResumePoint(str(prefix), state)


def job_resume_point(opt, folder):
    """The resume point of the whole job: decided on rank 0 (see resume_prefix), whose set every rank then reads."""
    decided = {}

    def decide():
        decided["point"] = point = resume_prefix(opt, folder)
        return None if point is None else point.prefix

    prefix = distributed.decided_on_main(decide)
    if distributed.is_main_process() or prefix is None:
        return decided.get("point")
    state, problem = read_training_state(folder, prefix)
    if state is None:
        raise CheckpointError(f"rank {distributed.rank()} cannot read the checkpoint set '{prefix}' that rank 0 "
                              f"resumes from in {folder} ({problem}): on several machines --checkpoints_dir must be "
                              f"a folder they share")
    return ResumePoint(prefix, state)


def resume_prefix(opt, folder):
    """find_resume_point, except in a worker torchrun restarted: the newest complete set, whatever the flags say
    (the job's own saves since it started are newer than anything --epoch named)."""
    restarts = distributed.restart_count()
    if restarts:
        prefix, state = newest_complete_set(folder, exclude=None)
        if state is not None:
            print(f"restart {restarts} of the job (torchrun --max-restarts): resuming exactly from '{prefix}', the "
                  f"newest complete checkpoint set in {folder}: epoch {state['epoch']}, {state['epoch_iter']} images "
                  f"into it")
            return ResumePoint(str(prefix), state)
        print(f"restart {restarts} of the job (torchrun --max-restarts): no complete checkpoint set in {folder} yet")
    return find_resume_point(opt, folder)


def resumed_options(opt, point):
    """The options a resume runs with: the set's weights loaded, its seed, and the epoch its run began at (the LR
    schedule is re-derived from the current flags for the epoch reached, so raising --n_epochs or --n_epochs_decay
    extends a run; --epoch_count applies to weights-only resumes). A restarted worker resumes as with
    --continue_train."""
    if point is None:
        return opt.replace(seed=shared_seed(opt.seed))
    began = point.began()
    if opt.epoch_count != began:
        distributed.print_main(f"--epoch_count {opt.epoch_count} is not used: the training state says the run "
                               f"began at epoch {began}, and it resumes at epoch {point.state['epoch']}")
    return opt.replace(seed=point.state["seed"], epoch_count=began, continue_train=True,
                       **(dict(epoch=point.prefix, load_iter=0) if point.prefix != load_prefix(opt) else {}))


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def restore_rng(saved):
    """This rank's RNG state of a training state (said when the process count changed)."""
    if len(saved) != distributed.world_size():
        distributed.print_main(f"the training state holds RNG states of {len(saved)} processes, this run has "
                               f"{distributed.world_size()}: random draws will not continue exactly")
    set_rng_state(saved[distributed.rank() % len(saved)])


def shared_seed(seed):
    """The run's seed: the given one, or one drawn on rank 0 and sent to every rank."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    if distributed.is_distributed():
        box = [seed]
        torch.distributed.broadcast_object_list(box, src=0)
        seed = box[0]
    return seed
