"""End-to-end training throughput: the reference path, then one fast path added per row (benchmarks/rows.py), and
the torch.compile rival. Each row is a fresh model built by the trainer's own code from the same seed, timed on
fixed random batches already on the device after an untimed warm-up (cudnn.benchmark, the CUDA-graph capture,
CycleGAN's image pools, torch.compile); a round is as many iterations as take about half a second. The last row,
``auto+loader``, is the default path fed by the real loader, with the share of time spent waiting for batches.

MFU = images/s x train GFLOP/image (rows.GFLOP_PER_IMAGE, paper size only) / the device's nominal bf16 dense peak
(H100/H200); the fp32 rows are measured against the same peak. No MFU where either is unknown.
"""

import gc
import itertools
import math
import time

import pytest
import torch

from benchmarks import rows
from fastp2p.data.select import create_fast_loader

WARMUP = {"cuda": 10, "cpu": 3}  # untimed iterations (CycleGAN: at least enough to fill its pools)
ROUND_SECONDS = {"cuda": 0.5, "cpu": 0.6}
ROUNDS = {"cuda": 5, "cpu": 3}
LOADER_ROW = "auto+loader"  # fed by the GPU cache on a GPU, the torch loader on the CPU


def generate(metafunc, size, device):
    configs = [(model, batch) for model in rows.MODELS for batch in size.batch_sizes[model]]
    metafunc.parametrize("model,batch_size", configs, ids=[f"{model}-bs{batch}" for model, batch in configs])
    if "row" in metafunc.fixturenames:
        metafunc.parametrize("row", (*rows.ROW_NAMES, LOADER_ROW))


def skip_reason(row, base_flags, device, config):
    """Why ``row`` does not run here, or None: the rival and the GPU-only paths on the CPU, a path the engine refuses
    for this model, max-autotune unless named."""
    if row in rows.COMPILE_ROWS and device.type != "cuda":
        return "the torch.compile rival runs on a GPU (compiling on the CPU takes minutes)"
    if row == "compile_max_autotune" and row not in (config.getoption("fastp2p_rows") or []):
        return "max-autotune compiles for long: it runs only when named in --fastp2p-rows"
    return rows.row_blocker(row, base_flags, device)


def warm_up(benchmark, opt, iteration, device):
    """Untimed iterations (none with --benchmark-disable)."""
    pool = opt.pool_size if opt.model == "cycle_gan" else 0
    count = max(WARMUP[device.type], math.ceil(pool / opt.batch_size) + 5 if pool else 0)
    for _ in range(0 if benchmark.disabled else count):
        iteration()


def throughput_info(benchmark, device, opt, model, environment):
    """it/s, MFU and peak memory of a row just timed (nothing with --benchmark-disable)."""
    info = benchmark.extra_info
    if benchmark.disabled:
        return
    info["it_per_s"] = info["images_per_s"] / opt.batch_size
    info["it_per_s_repeats"] = [rate / opt.batch_size for rate in info["images_per_s_repeats"]]
    gflop = rows.GFLOP_PER_IMAGE.get((model, opt.netG, opt.crop_size))
    peak = rows.peak_tflops(environment["device"]) if device.type == "cuda" else None
    info["mfu"] = info["images_per_s"] * gflop / (peak * 1e3) if gflop and peak else None
    if device.type == "cuda":
        info["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def free(device, row=None):
    if row in rows.COMPILE_ROWS:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def test_train(timed, benchmark, model, batch_size, row, size, device, environment, request):
    fed = row == LOADER_ROW
    root = rows.dataroot(aligned=model == "pix2pix") if fed else None
    base = rows.model_flags(size, model, batch_size, device, dataroot=root)
    reason = None if fed else skip_reason(row, base, device, request.config)
    if reason:
        pytest.skip(reason)
    flags = [] if fed else rows.row_flags(row, base, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt, net, engine, step = rows.build(base + flags, device)
    loader = create_fast_loader(opt, "auto", device) if fed else None
    batches, waits = rows.forever(loader) if fed else itertools.cycle(rows.random_batches(opt, device)), []

    def iteration():
        before = time.perf_counter()
        data = next(batches)
        waits.append(time.perf_counter() - before)
        step(data)

    try:
        warm_up(benchmark, opt, iteration, device)
        timed(iteration, group=f"train {model} bs{batch_size}", row=row, units=batch_size, unit="images",
              rounds=ROUNDS[device.type], round_seconds=ROUND_SECONDS[device.type], reference=row == "reference",
              model=model, batch_size=batch_size, engine=engine.describe(), flags=flags,
              **({"loader": type(loader).__name__, "dataroot": root} if fed else {}))
        throughput_info(benchmark, device, opt, model, environment)
        if fed and not benchmark.disabled:
            timed_calls = benchmark.extra_info["calls_per_round"] * len(benchmark.stats.stats.data)
            benchmark.extra_info["data_wait_share"] = sum(waits[-timed_calls:]) / sum(benchmark.stats.stats.data)
        losses = net.get_current_losses()
        assert all(math.isfinite(value) for value in losses.values()), losses
    finally:
        if fed:
            batches.close()
            getattr(loader, "close", lambda: None)()
        free(device, row)
