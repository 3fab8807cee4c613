"""What a run runs on: fastp2p's version and commit, Python, torch and its CUDA and cuDNN, Triton, DALI and
torchvision, the device, the process group. The doctor prints it; the self-check's cached verdicts are keyed by it."""

import importlib.metadata
import os
import platform
import subprocess

import torch

from fastp2p import __version__, distributed


def package_version(name):
    """The installed version of a distribution, or None (looked up without importing it)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def commit():
    """The git commit of this tree (FASTP2P_COMMIT where the tree came without its history), or None."""
    if os.environ.get("FASTP2P_COMMIT"):
        return os.environ["FASTP2P_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def device_report(device):
    if device.type != "cuda":
        return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "index": device.index, "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "driver": cuda_driver_version()}


def cuda_driver_version():
    """The NVIDIA driver's version, as nvidia-smi reports it (None where it cannot be asked)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


def environment(device):
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "fastp2p": __version__, "commit": commit(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": cudnn, "triton": package_version("triton"),
        "dali": package_version("nvidia-dali-cuda130") or package_version("nvidia-dali-cuda120"),
        "torchvision": package_version("torchvision"), "device": device_report(device),
        "process_group": {"rank": distributed.rank(), "world_size": distributed.world_size(),
                          "local_rank": int(os.environ.get("LOCAL_RANK", 0))} if distributed.is_distributed() else None,
    }


def describe(env):
    """The environment in two lines."""
    device = env["device"]
    where = (f"{device['name']} (compute {device['compute_capability']}, {device['memory_gib']} GiB, driver "
             f"{device['driver']})" if device["type"] == "cuda" else f"CPU ({device['name']}, {device['threads']} "
                                                                    f"threads)")
    group = env["process_group"]
    ranks = f", rank {group['rank']} of {group['world_size']}" if group else ""
    return (f"fastp2p {env['fastp2p']} ({env['commit'] or 'commit unknown'}), Python {env['python']}, torch "
            f"{env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), Triton {env['triton']}, DALI {env['dali']}, "
            f"torchvision {env['torchvision']}\n{where}{ranks}")
