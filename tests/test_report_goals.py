"""``python -m benchmarks.report FOLDER --goals`` reads the training benchmark's rows (pytest-benchmark JSON) into verdicts: goals met
or not, and a switch called faster only when every repeat of its row beats every repeat of its baseline."""

import json

import pytest

from benchmarks import report


def row(model, batch, name, repeats):
    """A test_train benchmark as --benchmark-json writes it (only the fields the report reads)."""
    speed = sorted(repeats)[len(repeats) // 2] * batch
    return dict(group=f"train {model} bs{batch}", extra_info=dict(
        model=model, batch_size=batch, row=name, it_per_s_repeats=repeats, images_per_s=speed))


def write(folder, rows, device="H200"):
    folder.mkdir(parents=True, exist_ok=True)
    machine_info = {"fastp2p": {"device": device, "torch": "2.13"}}
    (folder / "result.json").write_text(json.dumps(dict(machine_info=machine_info, benchmarks=rows)))


def lines_of(text, start):
    return [line for line in text.splitlines() if line.startswith(start)]


def test_goals_and_switch_verdicts(tmp_path):
    write(tmp_path / "goals_pix2pix", [
        row("pix2pix", 1, "reference", [50, 52, 51]),
        row("pix2pix", 1, "cudnn_search_all", [700, 720, 710]),       # 710 it/s, 13.92x the reference
        row("pix2pix", 1, "overlap_optimizer", [715, 730, 725]),      # overlaps the baseline's repeats
        row("pix2pix", 1, "triton_adam", [800, 810, 805]),             # baseline: the default row (no two streams)
        row("pix2pix", 16, "reference", [10, 10, 10]),
        row("pix2pix", 16, "cudnn_search_all", [200, 210, 205]),      # 3280 img/s: under 5000
    ])
    write(tmp_path / "goals_cycle_gan", [
        row("cycle_gan", 1, "reference", [15, 15, 15]),
        row("cycle_gan", 1, "cudnn_search_all", [160, 161, 162]),
        row("cycle_gan", 1, "two_streams", [150, 151, 152]),
    ])
    write(tmp_path / "rival_pix2pix", [row("pix2pix", 1, "compile_reduce_overhead", [300, 300, 300])])
    write(tmp_path / "rival_cycle_gan", [row("cycle_gan", 1, "compile_reduce_overhead", [100, 100, 100])])
    write(tmp_path / "goals_cycle_gan_4", [row("cycle_gan", 4, "cudnn_search_all", [70, 70, 70])])  # no reference
    (tmp_path / "doctor.json").write_text(json.dumps({"passed": True}))  # not benchmark files: passed over
    (tmp_path / "profile_categories.json").write_text(json.dumps([{"kernels_per_iter": 3}]))
    text = report.goals(str(tmp_path))
    (p1,) = lines_of(text, "| pix2pix bs1 |")[:1]
    assert "| 710.0 |" in p1 and "| 13.92x |" in p1 and "| 2.37x |" in p1 and p1.endswith("| yes |")
    (p16,) = lines_of(text, "| pix2pix bs16 |")[:1]
    assert "| 3280.0 |" in p16 and p16.endswith("| no |")
    (c1,) = lines_of(text, "| cycle_gan bs1 | 161.0")
    assert "| 1.61x |" in c1 and c1.endswith("| no |")  # 10.7x the reference, but 1.61x the rival
    (c4,) = lines_of(text, "| cycle_gan bs4 |")[:1]  # 280 img/s, but no rival row: neither met nor missed
    assert "| 280.0 |" in c4 and c4.endswith("| not measured |")
    switches = {tuple(cell.strip() for cell in line.split("|")[1:3]): line
                for line in text.split("## Switches")[1].splitlines() if line.startswith("| ") and "bs" in line}
    assert switches["pix2pix bs1", "overlap_optimizer"].endswith("| within noise |")
    assert "| cudnn_search_all |" in switches["pix2pix bs1", "triton_adam"]
    assert switches["pix2pix bs1", "triton_adam"].endswith("| faster in every repeat |")
    assert switches["cycle_gan bs1", "two_streams"].endswith("| slower in every repeat |")
    assert ("cycle_gan bs1", "triton_adam") not in switches  # a row that failed is absent from its file


def test_rows_of_two_devices_are_refused(tmp_path):
    write(tmp_path / "a", [row("pix2pix", 1, "reference", [50, 50, 50])])
    write(tmp_path / "b", [row("pix2pix", 1, "amp", [50, 50, 50])], device="x86_64 CPU")
    with pytest.raises(ValueError, match="one evidence run"):
        report.goals(str(tmp_path))


def test_the_command_writes_the_page(tmp_path, capsys):
    write(tmp_path / "goals", [row("pix2pix", 1, "cudnn_search_all", [700, 720, 710])])
    assert report.main([str(tmp_path), "--goals", "--out", str(tmp_path / "goals.md")]) == 0
    assert (tmp_path / "goals.md").read_text() == capsys.readouterr().out
    assert "| pix2pix bs1 | 710.0 | 700 | not measured |" in (tmp_path / "goals.md").read_text()
