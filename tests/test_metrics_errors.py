"""``python -m fastp2p.metrics`` on flags and folders it cannot use: one line, exit status 2, said before the scoring
when the flags show it, and no metrics.json lost or half written; scores that were computed are still printed."""

import errno
import json
import os

import pytest
import torch

from fastp2p import metrics
from fastp2p.metrics import cli
from tests.test_metrics import write_results

SCORE_NAMES = ["l1", "psnr", "ssim"]


@pytest.fixture
def results(tmp_path):
    """A results folder as fastp2p.test writes it: the images in images/, metrics.json beside them."""
    folder = tmp_path / "res"
    write_results(folder / "images", ["a", "b"])
    return folder


def one_error_line(capsys, *parts):
    captured = capsys.readouterr()
    assert captured.err.startswith("fastp2p.metrics: error: ") and captured.err.count("\n") == 1, captured.err
    assert all(part in captured.err for part in parts), captured.err
    return captured


def assert_scores_printed(captured):
    assert [line.split()[0] for line in captured.out.splitlines()] == SCORE_NAMES, captured.out


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that file modes bind (not root)")
def test_a_read_only_results_folder_is_one_line_after_the_scores(results, capsys):
    results.chmod(0o555)
    try:
        assert metrics.main([str(results), "--no_fid"]) == 2
    finally:
        results.chmod(0o755)
    assert_scores_printed(one_error_line(capsys, f"cannot write metrics.json into {results}: Permission denied"))
    assert sorted(os.listdir(results)) == ["images"]


def test_a_failed_write_keeps_the_metrics_json_there_and_prints_the_scores(results, capsys, monkeypatch):
    """A read-only file system (simulated: the suite may run as root, whom file modes do not stop) refuses the new
    file; the metrics.json of an earlier scoring stays as it was."""
    (results / "metrics.json").write_text('{"psnr": 1.0}')

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(cli, "open", read_only, raising=False)
    assert metrics.main([str(results), "--no_fid"]) == 2
    assert_scores_printed(one_error_line(capsys, f"cannot write metrics.json into {results}: Read-only file system",
                                         "the scores are printed above"))
    assert (results / "metrics.json").read_text() == '{"psnr": 1.0}'
    assert sorted(os.listdir(results)) == ["images", "metrics.json"]


def test_a_disk_that_fills_mid_write_leaves_the_old_metrics_json_whole(results, capsys, monkeypatch):
    (results / "metrics.json").write_text('{"psnr": 1.0}')

    def disk_full(obj, f, **kwargs):
        f.write('{"l1": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", disk_full)
    assert metrics.main([str(results), "--no_fid"]) == 2
    assert_scores_printed(one_error_line(capsys, "No space left on device"))
    assert (results / "metrics.json").read_text() == '{"psnr": 1.0}'
    assert sorted(os.listdir(results)) == ["images", "metrics.json"]


def test_a_metrics_json_that_is_a_folder_is_one_line(results, capsys):
    (results / "metrics.json").mkdir()
    assert metrics.main([str(results), "--no_fid"]) == 2
    assert_scores_printed(one_error_line(capsys, f"cannot write metrics.json into {results}: Is a directory"))
    assert sorted(os.listdir(results)) == ["images", "metrics.json"] and not os.listdir(results / "metrics.json")


DEVICES = [("banana", "--device banana is not a device name"),
           pytest.param("cuda:7", "--device cuda:7 cannot be used here",
                        marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7"))]


@pytest.mark.parametrize("no_fid", [[], ["--no_fid"]], ids=["with_fid", "no_fid"])
@pytest.mark.parametrize("device, message", DEVICES)
def test_a_bad_device_is_one_line_before_scoring(results, capsys, device, message, no_fid):
    assert metrics.main([str(results), "--device", device, *no_fid]) == 2
    assert one_error_line(capsys, message).out == ""
    assert not (results / "metrics.json").exists()


def not_weights(path):
    path.write_text("not a weights file\n")


def no_tensors(path):
    torch.save({"epoch": 3}, path)


@pytest.mark.parametrize("no_fid", [[], ["--no_fid"]], ids=["with_fid", "no_fid"])
@pytest.mark.parametrize("make, message", [
    (None, "no such file"),
    (not_weights, "is not a weights file torch.load reads"),
    (no_tensors, "holds no weights (a state dict of tensors)"),
], ids=["missing", "not_weights", "no_tensors"])
def test_inception_weights_that_cannot_be_used_are_one_line_naming_the_file(results, tmp_path, capsys, make,
                                                                             message, no_fid):
    weights = tmp_path / "inception.pth"
    if make is not None:
        make(weights)
    assert metrics.main([str(results), "--inception_weights", str(weights), *no_fid]) == 2
    assert one_error_line(capsys, f"--inception_weights {weights}", message).out == ""
    assert not (results / "metrics.json").exists()


def test_a_state_dict_passes_the_weights_check(tmp_path, results, capsys):
    weights = tmp_path / "inception.pth"
    torch.save({"conv.weight": torch.zeros(2, 3)}, weights)
    assert metrics.main([str(results), "--inception_weights", str(weights), "--no_fid"]) == 0
    assert_scores_printed(capsys.readouterr())
    assert list(json.loads((results / "metrics.json").read_text())) == SCORE_NAMES


def test_weights_of_another_network_are_one_line_naming_the_file(results, tmp_path, capsys, monkeypatch):
    """A state dict that passes the check but not torch-fidelity's load_state_dict (faked: torch-fidelity may be
    missing here), whose message runs over several lines."""
    fid = pytest.importorskip("torchmetrics.image.fid")
    weights = tmp_path / "resnet.pth"
    torch.save({"conv.weight": torch.zeros(2, 3)}, weights)

    def wrong_keys(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict for FeatureExtractorInceptionV3:\n\tMissing key(s) ...")

    monkeypatch.setattr(fid, "FrechetInceptionDistance", wrong_keys)
    assert metrics.main([str(results), "--inception_weights", str(weights)]) == 2
    captured = one_error_line(capsys, f"could not be loaded from {weights} (Error(s) in loading state_dict for "
                                      "FeatureExtractorInceptionV3:); score without FID/KID (--no_fid)")
    assert captured.out == "" and not (results / "metrics.json").exists()
