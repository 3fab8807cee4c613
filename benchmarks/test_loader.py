"""Images/s of each data loader (torch: PIL + DataLoader workers, DALI, the GPU cache, torchvision's decode) on the
aligned and unaligned sets, and what each ``--worker_start`` method costs the torch loader.

Loaders: the reference's training crops (256 from 286 loads; small size: 64 from 72), one image = one A and one B
crop. Construction (the GPU cache's fill, DALI's pipeline, the workers' start) is left out of the rounds; a round is
a few batches after warm-up, ended by a device synchronisation. The group's reference row is the torch loader.
Worker start: a fresh process per round (a forkserver, once started, would serve the next round), timing the first
batch (the workers start, import torch and fastp2p, receive the dataset) and the epochs after it, on the built-in set
with the README's main command's data flags (load/crop 128, batch 4, 4 workers; small size: 1 worker, 8 images).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import rows
from fastp2p.data import create_dataset
from fastp2p.data.dali_loader import DALILoader, dali_available
from fastp2p.data.gpu_cache import GPUCacheLoader
from fastp2p.data.torchvision_decode import TorchvisionDecodeLoader, torchvision_available

LOADERS = ("torch", "dali", "gpu_cache", "torchvision")
CROPS = {"paper": (286, 256), "small": (72, 64)}
BATCH_SIZES = {"paper": (1, 16), "small": (1, 4)}
BATCHES, WARMUP, ROUNDS = 4, 2, 3  # timed batches per round, untimed batches first
WORKER_STARTS = ("fork", "forkserver", "spawn")
WORKER_RUN = {"paper": (4, float("inf")), "small": (1, 8)}  # workers, images


def generate(metafunc, size, device):
    if "loader" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", BATCH_SIZES[size.name], ids=[f"bs{b}" for b in BATCH_SIZES[size.name]])
        metafunc.parametrize("mode", ["aligned", "unaligned"])
        metafunc.parametrize("loader", LOADERS)


def loader_opt(mode, batch_size, load, crop, workers, **changes):
    """The options a loader reads: the trainer's defaults for ``mode`` at these sizes, with ``changes``."""
    return argparse.Namespace(**{
        "dataroot": rows.dataroot(aligned=mode == "aligned"), "phase": "train", "dataset_mode": mode,
        "direction": "AtoB", "input_nc": 3, "output_nc": 3, "serial_batches": False, "num_threads": workers,
        "batch_size": batch_size, "load_size": load, "crop_size": crop, "max_dataset_size": float("inf"),
        "preprocess": "resize_and_crop", "no_flip": False, "seed": 0, **changes})


def build(kind, opt, device):
    """The loader, or why it cannot run here."""
    if kind == "torch":
        return create_dataset(opt)
    if kind == "gpu_cache":
        return GPUCacheLoader(opt, device)
    if kind == "dali":
        if not dali_available():
            return "DALI not installed"
        return DALILoader(opt, device_id=(device.index or 0) if device.type == "cuda" else None,
                          num_threads=opt.num_threads)
    if not torchvision_available():
        return "torchvision not importable"
    if device.type != "cuda":
        return "needs CUDA (nvJPEG)"
    return TorchvisionDecodeLoader(opt, device)


def test_loader(timed, benchmark, loader, mode, batch_size, size, device):
    opt = loader_opt(mode, batch_size, *CROPS[size.name], os.cpu_count() if size.workers is None else size.workers,
                     device=device)
    start = time.perf_counter()
    built = build(loader, opt, device)
    if isinstance(built, str):
        pytest.skip(built)
    setup_s = time.perf_counter() - start
    stream = rows.forever(built)

    def close_loader():
        stream.close()
        getattr(built, "close", lambda: None)()

    handed_over = False  # the torch loader, the group's reference, stays open for the group's later rows' rounds
    try:
        for _ in range(0 if benchmark.disabled else WARMUP):
            next(stream)
        count = 1 if benchmark.disabled else BATCHES
        timed(lambda: [next(stream) for _ in range(count)], group=f"loader {mode} bs{batch_size}", row=loader,
              reference=loader == "torch", release=close_loader, units=count * batch_size, unit="images",
              rounds=ROUNDS, setup_s=setup_s, workers=opt.num_threads, load_size=opt.load_size,
              crop_size=opt.crop_size)
        handed_over = loader == "torch"
    finally:
        if not handed_over:
            close_loader()


def first_batch(method, workers, images):
    """In a fresh process: seconds to the first batch with ``--worker_start method``, then the median epoch."""
    torch.set_num_threads(1)
    loader = create_dataset(loader_opt("aligned", 4, 128, 128, workers, direction="BtoA", max_dataset_size=images,
                                       worker_start=method))
    try:
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        first = time.perf_counter() - start
        for _ in batches:
            pass
        epochs = []
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            epochs.append(time.perf_counter() - start)
    finally:
        loader.close()
    return {"first_batch_s": first, "epoch_s": statistics.median(epochs)}


@pytest.mark.parametrize("method", WORKER_STARTS)
def test_worker_start(timed, benchmark, method, size):
    runs = []
    code = ("import json; from benchmarks.test_loader import first_batch; "
            f"print(json.dumps(first_batch({method!r}, *{WORKER_RUN[size.name]!r})))")

    def fresh_process():
        out = subprocess.run([sys.executable, "-c", code], cwd=rows.ROOT, check=True, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=rows.ROOT)).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))

    timed(fresh_process, group="loader worker_start", row=method, reference=method == "fork", units=1,
          unit="starts", rounds=ROUNDS, workers=WORKER_RUN[size.name][0], images=WORKER_RUN[size.name][1])
    timed_runs = runs if benchmark.disabled else runs[-len(benchmark.stats.stats.data):]  # not the sizing call's
    benchmark.extra_info.update({key: statistics.median(run[key] for run in timed_runs) for key in runs[0]})
