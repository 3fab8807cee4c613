"""The training benchmark runs end to end in its smallest CPU mode and writes the fields a report needs."""

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_train.py"


def test_smallest_cpu_run_writes_json_and_markdown(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--models", "pix2pix", "--batch_sizes", "1",
         "--rows", "reference", "channels_last", "--iters", "2", "--repeats", "2", "--warmup", "1", "--no_loader",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    (result,) = tmp_path.glob("train_cpu_*.json")
    data = json.loads(result.read_text())
    assert {"device", "torch", "triton", "cudnn", "commit", "command", "peak_tflops", "total_s"} <= set(data)
    assert [row["row"] for row in data["rows"]] == ["reference", "+channels_last"]
    reference, fast = data["rows"]
    assert reference["flags"] == ["--reference"] and "--channels_last" in fast["flags"]
    assert "channels_last" in fast["engine"] and "reference path" in reference["engine"]
    for row in data["rows"]:
        assert row["error"] is None
        assert row["iters"] == 2 and len(row["it_per_s_repeats"]) == 2 and row["it_per_s"] > 0
        assert row["images_per_s"] == row["it_per_s"] and row["losses_finite"]
        assert row["mfu"] is None  # no FLOP count for the small nets, no peak for a CPU
    assert reference["vs_reference"] == 1.0
    assert result.with_suffix(".md").read_text().count("| pix2pix | 1 |") == 2


def test_rows_that_need_a_gpu_are_refused_on_the_cpu(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--rows", "cuda_graph",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "none of the rows" in run.stderr


def test_every_gpu_row_asks_for_a_combination_the_engine_accepts():
    """Each cumulative GPU row's switches pass the engine's checks for a GPU, with its own technique on and what
    it replaces off: a row that kept on what its technique cannot run beside (--fused_adam under --adam_kernel
    triton, say) would only fail on a lent machine."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train
    from fastp2p.engine import resolve_engine
    from fastp2p.options import parse_options

    cuda = torch.device("cuda", 0)
    args = bench_train.parse_args(["--device", "cpu", "--small"])
    args.device, args.chain = cuda, bench_train.GPU_CHAIN
    for model in ("pix2pix", "cycle_gan"):
        for row in set(bench_train.GPU_CHAIN) - bench_train.inapplicable(args, model):
            argv = bench_train.model_flags(args, model, 1) + bench_train.model_row_flags(args, model, row)
            config = resolve_engine(parse_options(argv, is_train=True), cuda)
            assert on(config, row), (model, row)
            replaced = [earlier for earlier, later in bench_train.LEFT_OFF_BY.items() if later == row]
            assert not any(on(config, earlier) for earlier in replaced), (model, row)


def on(config, row):
    """Whether the technique of a benchmark row is on in ``config`` (the Triton Adam row is --adam_kernel triton)."""
    return config.adam_kernel == "triton" if row == "triton_adam" else getattr(config, row) not in (False, None)
