"""End-to-end training throughput: the reference path, then one fast path added per row (benchmarks/rows.py), and
the torch.compile rival. Each row is a fresh model built by the trainer's own code from the same seed, timed on
fixed random batches already on the device after an untimed warm-up (cudnn.benchmark, the CUDA-graph capture,
CycleGAN's image pools, torch.compile); a round is as many iterations as take about half a second.
Apart, the default path (``auto``) fed by the real loader, with the share of time spent waiting for batches.

MFU = images/s x train GFLOP/image (rows.GFLOP_PER_IMAGE, paper size only) / the device's nominal bf16 dense peak
(H100/H200); the fp32 rows are measured against the same peak. No MFU where either is unknown.
"""

import gc
import math
import time

import pytest
import torch

from benchmarks import rows
from fastp2p.data.select import create_fast_loader

WARMUP = {"cuda": 10, "cpu": 3}  # untimed iterations (CycleGAN: at least enough to fill its pools)
ROUND_SECONDS = {"cuda": 0.5, "cpu": 0.6}
ROUNDS = {"cuda": 5, "cpu": 3}


def generate(metafunc, size, device):
    configs = [(model, batch) for model in rows.MODELS for batch in size.batch_sizes[model]]
    metafunc.parametrize("model,batch_size", configs, ids=[f"{model}-bs{batch}" for model, batch in configs])
    if "row" in metafunc.fixturenames:
        metafunc.parametrize("row", rows.ROW_NAMES)


def skip_reason(row, base_flags, device, config):
    """Why ``row`` does not run here, or None: the rival and the GPU-only paths on the CPU, a path the engine refuses
    for this model, max-autotune unless named."""
    if row in rows.COMPILE_ROWS and device.type != "cuda":
        return "the torch.compile rival runs on a GPU (compiling on the CPU takes minutes)"
    if row == "compile_max_autotune" and row not in (config.getoption("fastp2p_rows") or []):
        return "max-autotune compiles for long: it runs only when named in --fastp2p-rows"
    return rows.row_blocker(row, base_flags, device)


def warm_up(benchmark, opt, step, batches, device):
    """Untimed iterations (none with --benchmark-disable)."""
    pool = opt.pool_size if opt.model == "cycle_gan" else 0
    count = max(WARMUP[device.type], math.ceil(pool / opt.batch_size) + 5 if pool else 0)
    rows.run_steps(step, batches, 0 if benchmark.disabled else count)


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
    base = rows.model_flags(size, model, batch_size, device)
    reason = skip_reason(row, base, device, request.config)
    if reason:
        pytest.skip(reason)
    flags = rows.row_flags(row, base, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt, net, engine, step = rows.build(base + flags, device)
    try:
        batches = rows.random_batches(opt, device)
        warm_up(benchmark, opt, step, batches, device)
        timed(rows.stepper(step, batches), group=f"train {model} bs{batch_size}", row=row, units=batch_size,
              unit="images", rounds=ROUNDS[device.type], round_seconds=ROUND_SECONDS[device.type],
              reference=row == "reference", model=model, batch_size=batch_size, engine=engine.describe(), flags=flags)
        throughput_info(benchmark, device, opt, model, environment)
        losses = net.get_current_losses()
        assert all(math.isfinite(value) for value in losses.values()), losses
    finally:
        del net, step
        free(device, row)


def test_train_with_loader(timed, benchmark, model, batch_size, size, device, environment):
    """The default path fed by the real loader (the GPU cache on a GPU, the torch loader on the CPU)."""
    root = rows.dataroot(aligned=model == "pix2pix")
    base = rows.model_flags(size, model, batch_size, device, dataroot=root)
    opt, net, engine, step = rows.build(base, device)
    loader = create_fast_loader(opt, "auto", device)

    stream, waits = rows.forever(loader), []

    def fed_step():
        before = time.perf_counter()
        data = next(stream)
        waits.append(time.perf_counter() - before)
        step(data)

    try:
        # warmed up on the loader's batches: the "batch" warm_up hands over is ignored for the next from the stream
        warm_up(benchmark, opt, lambda _: step(next(stream)), [None], device)
        timed(fed_step, group=f"train {model} bs{batch_size}", row="auto+loader", units=batch_size, unit="images",
              rounds=ROUNDS[device.type], round_seconds=ROUND_SECONDS[device.type], model=model,
              batch_size=batch_size, engine=engine.describe(), flags=[], loader=type(loader).__name__, dataroot=root)
        throughput_info(benchmark, device, opt, model, environment)
        if not benchmark.disabled:
            timed_calls = benchmark.extra_info["calls_per_round"] * len(benchmark.stats.stats.data)
            benchmark.extra_info["data_wait_share"] = sum(waits[-timed_calls:]) / sum(benchmark.stats.stats.data)
    finally:
        stream.close()
        close = getattr(loader, "close", None)
        if close:
            close()
        free(device)
