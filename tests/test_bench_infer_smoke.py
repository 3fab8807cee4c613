"""The inference benchmark runs end to end in its smallest CPU mode and writes the fields a report needs."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_infer.py"


def test_smallest_cpu_run_writes_json_and_markdown(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--batch_sizes", "1", "2", "--images", "2",
         "--repeats", "2", "--warmup", "1", "--commit", "abc123", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (result,) = tmp_path.glob("infer_cpu_*.json")
    data = json.loads(result.read_text())
    assert {"device", "torch", "commit", "command", "network", "host_ms_per_image", "rows"} <= set(data)
    assert data["commit"] == "abc123" and data["torch"] == __import__("torch").__version__
    assert [(r["row"], r["batch_size"]) for r in data["rows"]] == [
        ("reference", 1), ("fastp2p", 1), ("reference", 2), ("fastp2p", 2)]
    for row in data["rows"]:
        assert "error" not in row, row
        assert row["images"] == 2 and len(row["images_per_s_repeats"]) == 2 and row["images_per_s"] > 0
        assert "reference path" in row["engine"]  # the CPU default is the reference path
    assert data["rows"][0]["vs_reference"] == 1.0
    assert data["host_ms_per_image"]["decode_ms"] > 0 and data["host_ms_per_image"]["png_ms"] > 0
    assert result.with_suffix(".md").read_text().count("| reference | ") == 2
