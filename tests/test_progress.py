"""Progress: a tqdm bar on a terminal, plain lines otherwise, counting the images of every rank, shown by rank 0."""

import io
import re

import pytest

from fastp2p import train as train_cli
from fastp2p.progress import Progress
from tests.test_ddp import assert_ok, launch
from tests.test_ddp import pytestmark as needs_gloo
from tests.test_train_cli import aligned_root, pix2pix_flags  # noqa: F401 (pytest fixture)

PROGRESS_LINE = re.compile(r"^\[progress\] epoch (\d+)/(\d+) iter (\d+)/(\d+) \(\d+%\) images (\d+) \| "
                           r"[\d.]+ img/s [\d.]+ it/s \| data wait \d+% \| ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d$")


def progress_lines(text):
    return [PROGRESS_LINE.match(line).groups() for line in text.splitlines() if line.startswith("[progress]")]


def test_plain_lines_without_a_terminal_count_every_ranks_images(capsys):
    progress = Progress(batches_per_epoch=5, images_per_batch=8, last_epoch=3)  # pytest's output is no terminal
    progress.start_epoch(2, batches_done=1)  # resumed one batch into epoch 2
    progress.update(0.0)
    progress.update(0.0)
    progress.report()
    figures = progress.end_epoch()
    assert progress_lines(capsys.readouterr().out) == [("2", "3", "3", "5", "24")]
    assert figures["images_per_s"] == figures["iterations_per_s"] * 8
    # 2 batches left in epoch 2 and 5 in epoch 3, at the measured pace
    assert figures["run_eta_s"] == 7 / figures["iterations_per_s"]


def test_a_terminal_gets_a_bar_and_no_plain_lines(capsys):
    terminal = io.StringIO()
    progress = Progress(batches_per_epoch=4, images_per_batch=2, last_epoch=1, bar=True, stream=terminal)
    progress.start_epoch(1, batches_done=0)
    for _ in range(3):
        progress.update(0.0)
    progress.report()
    progress.write("a console line")
    progress.close()
    assert "epoch 1/1" in terminal.getvalue() and "3/4" in terminal.getvalue()
    assert capsys.readouterr().out == "a console line\n"


def test_other_ranks_show_nothing(capsys):
    progress = Progress(batches_per_epoch=4, images_per_batch=2, last_epoch=1, enabled=False, bar=True)
    progress.update(0.0)
    progress.report()
    assert progress.bar is None and capsys.readouterr().out == ""


def test_a_logged_run_prints_a_progress_line_after_each_loss_line(tmp_path, aligned_root, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))) == 0
    out = capsys.readouterr().out
    # 6 images, batch 1, --print_freq 2: a loss line and a progress line at iterations 2, 4, 6
    assert progress_lines(out) == [("1", "1", str(i), "6", str(i)) for i in (2, 4, 6)]
    lines = out.splitlines()
    assert all(lines[i - 1].startswith("(epoch: 1") for i, line in enumerate(lines) if line.startswith("[progress]"))


@pytest.mark.slow
@needs_gloo
def test_ddp_shows_one_progress_stream_counting_both_ranks(tmp_path, aligned_root):
    result = launch(["-m", "fastp2p.train", *pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0)),
                     "--print_freq", "1"])
    assert_ok(result)
    # 6 images on 2 ranks: 3 iterations of one image on each, 2 images an iteration, one rank reporting
    assert progress_lines(result.stdout) == [("1", "1", str(i), "3", str(2 * i)) for i in (1, 2, 3)]
    assert re.search(r"End of epoch 1 / 1 .* img/s, data wait [\d.]+%, lr G=0.0002000 D=0.0002000", result.stdout)
