"""The training benchmark runs end to end in its smallest CPU mode and writes the fields a report needs."""

import json
import subprocess
import sys
from pathlib import Path

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
