"""The start-up self-check of fastp2p.train and fastp2p.test: the fast paths a run turns on, checked against the
reference path on this device, at this run's shapes, before the run writes anything (the doctor's checks).

The checks run in a separate process (``python -m fastp2p.selfcheck``): a CUDA error such as an illegal address
poisons a process's CUDA context, and a hang must not hold the run. It writes each check's result as it finishes and
names the check it starts, so a crash or a hang (past --selfcheck_timeout) is pinned on that check, and the rest are
checked in a new process. First the paths together; where they fail, each alone. A path that 'auto' chose and that
fails is turned off with one line, and the run goes on with the others (re-resolved, so a path that takes over
from it is checked too); one asked for explicitly stops the run with a one-line error. Verdicts are cached, keyed
by the device, its driver, the versions of fastp2p, torch, CUDA, cuDNN and Triton, the engine and the run's shapes,
so a resumed or repeated run does not pay again. Under torchrun each rank checks its own device, and every rank
takes the decision of all: a path fails if it failed on any rank.
"""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile

import torch

from fastp2p import distributed
from fastp2p.engine import resolve_engine
from fastp2p.engine.registry import BY_NAME
from fastp2p.environment import environment
from fastp2p.errors import OptionError
from fastp2p.parity import TOGETHER, paths_beside_amp
from fastp2p.worker_lifetime import end_with_source

SHAPE_GROUPS = ("model_options",)
SHAPE_FLAGS = ("crop_size", "load_size", "batch_size", "preprocess", "input_nc", "output_nc")
GROUP_ENVIRONMENT = ("WORLD_SIZE", "RANK", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT",
                     "TORCHELASTIC_RUN_ID")
"""torchrun's variables a check process must not see: it checks its rank's device alone, outside the group"""


def wanted(opt, device):
    """Whether this run checks itself: --selfcheck on, or auto on a GPU."""
    return opt.selfcheck == "on" or (opt.selfcheck == "auto" and device.type == "cuda")


def cache_path(opt, config, device):
    env = environment(device)
    env.pop("process_group")
    key = {"command": opt.command, "engine": config.as_flags(), "environment": env,
           "shapes": {**{name: getattr(opt, name) for name in SHAPE_FLAGS},
                      **{key: value for group in SHAPE_GROUPS for key, value in vars(getattr(opt, group)).items()}}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "fastp2p", "selfcheck", f"{digest}.json")


def checks_for(config):
    """The checks a config needs: its paths together when there are several beside --amp, then --amp alone."""
    beside = paths_beside_amp(config)
    return ([TOGETHER] if len(beside) > 1 else beside) + (["amp"] if config.amp is not None else [])


def run_checks(opt, config, device, names):
    """{check: result} of ``names``, each in a check process, a new one after one that crashed or hung."""
    done, todo = {}, list(names)
    with tempfile.TemporaryDirectory(prefix="fastp2p-selfcheck-") as folder:
        options, report = os.path.join(folder, "options.pickle"), os.path.join(folder, "report.json")
        with open(options, "wb") as f:
            pickle.dump(opt.replace(**config.as_flags(), selfcheck="off"), f)
        env = {key: value for key, value in os.environ.items() if key not in GROUP_ENVIRONMENT}
        while todo:
            if os.path.exists(report):
                os.remove(report)
            command = [sys.executable, "-c", check_process_source(), options, report, ",".join(todo)]
            process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
            try:
                _, stderr = process.communicate(timeout=opt.selfcheck_timeout)
                how = None if process.returncode == 0 else (
                    f"its check process died ({describe_exit(process.returncode)}"
                    f"{': ' + last_line(stderr) if last_line(stderr) else ''})")
            except subprocess.TimeoutExpired:
                how = f"it did not finish within --selfcheck_timeout {opt.selfcheck_timeout:g} s"
                os.killpg(process.pid, signal.SIGKILL)  # the check process and whatever it started
                process.communicate()
            progress = read_report(report)
            done.update(progress["results"])
            started = progress.get("started")
            if how is not None and started is not None and started not in done:
                done[started] = {"name": started, "status": "failed", "why": how}
            elif how is not None:
                for name in todo:
                    done.setdefault(name, {"name": name, "status": "failed", "why": how})
            todo = [name for name in todo if name not in done]
            if TOGETHER in done and done[TOGETHER]["status"] == "failed":  # name the culprits
                todo += [name for name in paths_beside_amp(config) if name not in done and name not in todo]
    return done


def describe_exit(code):
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def last_line(text):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def read_report(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"results": {}}


def verdicts(opt, config, device):
    """({path: result} of every path of ``config``, whether it came from the cache): cached, or checked and cached."""
    path = cache_path(opt, config, device)
    try:
        with open(path) as f:
            return json.load(f), True
    except (OSError, ValueError):
        pass
    done = run_checks(opt, config, device, checks_for(config))
    together = done.get(TOGETHER)
    found = {name: done[name] if name in done else together for name in config.on() if BY_NAME[name].check}
    found = {name: entry for name, entry in found.items() if entry is not None}
    try:  # a cache that cannot be written costs the next run a check, nothing more
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(found, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return found, False


def failures_of_all_ranks(failed):
    """{path: why} of the paths that failed on any rank, the same on every rank."""
    if not distributed.is_distributed():
        return failed
    gathered = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, failed)
    union = {}
    for rank, found in enumerate(gathered):
        for name, why in found.items():
            union.setdefault(name, why if len(gathered) == 1 else f"{why} (rank {rank})")
    return union


def checked_config(opt, device, config, say=distributed.print_main):
    """The config this run trains with: ``config`` with every path 'auto' chose that fails its check turned off (one
    line each, through ``say``). A failing path asked for explicitly is an OptionError."""
    if not wanted(opt, device):
        return config
    turned_off = {}
    while True:
        results, cached = verdicts(opt, config, device)
        failed = failures_of_all_ranks({name: entry["why"] for name, entry in results.items()
                                        if entry["status"] == "failed" and name not in turned_off})
        if not failed:
            if results:
                say(f"self-check: {', '.join(results)} pass on this device" + (" (cached verdict)" if cached else ""))
            return config
        for name, why in failed.items():
            asked = getattr(opt, name)
            if asked != BY_NAME[name].default:
                raise OptionError(f"--{name} {asked} failed its self-check on this device: {why}; python -m "
                                  f"fastp2p.doctor with this run's flags shows the details")
            say(f"self-check: --{name} turned off: {why} (python -m fastp2p.doctor with this run's flags shows the "
                f"details)")
            turned_off[name] = BY_NAME[name].off_flag
        config = resolve_engine(opt.replace(**turned_off), device)


def check_process_source():
    """``python -c`` statements that start the check process (this module's main), after arming, where Linux can,
    its end with the trainer's: it runs in a session of its own (so that a timeout ends it and what it started), which
    a kill of the trainer's group does not reach, and a trainer killed outright would leave it running."""
    run = "import runpy\nrunpy.run_module('fastp2p.selfcheck', run_name='__main__', alter_sys=True)\n"
    return (end_with_source(os.getpid(), whole_group=True) if hasattr(os, "pidfd_open") else "") + run


def check_process(options, report, names):
    """The check process: each check of ``names`` on the options the run wrote, its result written as it finishes."""
    from fastp2p.parity import run_check

    with open(options, "rb") as f:
        opt = pickle.load(f)
    device = distributed.init_device(opt.gpu_ids)
    asked = resolve_engine(opt, device)
    progress = {"results": {}, "started": None}
    for name in names:
        progress["started"] = name
        write(report, progress)
        progress["results"][name] = run_check(opt, device, name, asked)
    progress["started"] = None
    write(report, progress)


def write(path, progress):
    with open(path + ".tmp", "w") as f:
        json.dump(progress, f, default=str)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    check_process(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
