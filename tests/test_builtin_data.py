"""The built-in synthetic dataset: deterministic, both layouts, idempotent, loadable. (How long generating it takes
is a benchmark question, not a test: a timed assertion fails on a loaded machine.)"""

import argparse
import filecmp
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.data import builtin_dataroot, create_dataset
from fastp2p.data.builtin import LABEL_COLOURS, MARKER
from fastp2p.errors import DatasetError


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("builtin") / "fastp2p_builtin")
    assert builtin_dataroot(root) == root
    return root


@pytest.mark.slow
def test_both_layouts_with_the_stated_counts_and_sizes(builtin):
    root = builtin
    counts = {name: len(os.listdir(os.path.join(root, name))) for name in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, name))}
    assert counts == {"test": 20, "testA": 20, "testB": 20, "train": 200, "trainA": 200, "trainB": 200}
    pair = np.asarray(Image.open(os.path.join(root, "train", "7.png")))
    assert pair.shape == (128, 256, 3)
    assert np.array_equal(pair[:, :128], np.asarray(Image.open(os.path.join(root, "trainA", "7.png"))))
    assert np.array_equal(pair[:, 128:], np.asarray(Image.open(os.path.join(root, "trainB", "7.png"))))
    label_colours = {tuple(c) for c in pair[:, 128:].reshape(-1, 3)}
    assert label_colours <= {tuple(c) for c in LABEL_COLOURS} and len(label_colours) >= 5


@pytest.mark.slow
def test_generation_is_deterministic(builtin, tmp_path):
    root = builtin
    again = builtin_dataroot(str(tmp_path / "again"))
    assert os.listdir(tmp_path) == ["again"]  # the staging folder was renamed, nothing left behind
    for folder in ("train", "testA", "testB"):
        names = sorted(os.listdir(os.path.join(root, folder)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(root, folder), os.path.join(again, folder),
                                                   names, shallow=False)
        assert (mismatch, errors) == ([], []) and len(match) == len(names)


def test_samples_differ(builtin):
    root = builtin
    first, second = (np.asarray(Image.open(os.path.join(root, "train", f"{i}.png"))) for i in (1, 2))
    assert not np.array_equal(first[:, 128:], second[:, 128:])


def test_second_call_reuses_and_foreign_folder_is_refused(builtin, tmp_path):
    root = builtin
    files = [os.path.join(root, MARKER), os.path.join(root, "train", "7.png"), os.path.join(root, "testB", "3.png")]
    stamps = [os.stat(path).st_mtime_ns for path in files]
    assert builtin_dataroot(root) == root
    assert [os.stat(path).st_mtime_ns for path in files] == stamps  # nothing written again
    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError, match="not a complete fastp2p built-in dataset"):
        builtin_dataroot(str(tmp_path / "mine"))


@pytest.mark.parametrize("mode", ["aligned", "unaligned"])
def test_loads_in_both_modes(builtin, mode):
    root = builtin
    opt = argparse.Namespace(dataroot=root, phase="test", dataset_mode=mode, direction="BtoA", input_nc=3,
                             output_nc=3, preprocess="resize_and_crop", load_size=128, crop_size=128,
                             no_flip=False, serial_batches=False, max_dataset_size=float("inf"), batch_size=4,
                             num_threads=0, isTrain=True, seed=0, device=torch.device("cpu"))
    loader = create_dataset(opt)
    assert len(loader) == 20
    batch = next(iter(loader))
    assert batch["A"].shape == batch["B"].shape == (4, 3, 128, 128)
