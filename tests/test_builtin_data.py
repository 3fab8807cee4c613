"""The built-in synthetic dataset: deterministic, both layouts, idempotent, fast, loadable."""

import argparse
import filecmp
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.data import DatasetError, builtin_dataroot, create_dataset
from fastp2p.data.builtin import LABEL_COLOURS, MARKER


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("builtin") / "fastp2p_builtin")
    start = time.perf_counter()
    assert builtin_dataroot(root) == root
    return root, time.perf_counter() - start


def test_generation_is_fast(builtin):
    _, seconds = builtin
    assert seconds < 20  # about 2 s on 2 idle cores; generous for a shared CI machine


def test_both_layouts_with_the_stated_counts_and_sizes(builtin):
    root, _ = builtin
    counts = {name: len(os.listdir(os.path.join(root, name))) for name in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, name))}
    assert counts == {"test": 20, "testA": 20, "testB": 20, "train": 200, "trainA": 200, "trainB": 200}
    pair = np.asarray(Image.open(os.path.join(root, "train", "7.png")))
    assert pair.shape == (128, 256, 3)
    assert np.array_equal(pair[:, :128], np.asarray(Image.open(os.path.join(root, "trainA", "7.png"))))
    assert np.array_equal(pair[:, 128:], np.asarray(Image.open(os.path.join(root, "trainB", "7.png"))))
    label_colours = {tuple(c) for c in pair[:, 128:].reshape(-1, 3)}
    assert label_colours <= {tuple(c) for c in LABEL_COLOURS} and len(label_colours) >= 5


def test_generation_is_deterministic(builtin, tmp_path):
    root, _ = builtin
    again = builtin_dataroot(str(tmp_path / "again"))
    assert os.listdir(tmp_path) == ["again"]  # the staging folder was renamed, nothing left behind
    for folder in ("train", "testA", "testB"):
        names = sorted(os.listdir(os.path.join(root, folder)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(root, folder), os.path.join(again, folder),
                                                   names, shallow=False)
        assert (mismatch, errors) == ([], []) and len(match) == len(names)


def test_samples_differ(builtin):
    root, _ = builtin
    first, second = (np.asarray(Image.open(os.path.join(root, "train", f"{i}.png"))) for i in (1, 2))
    assert not np.array_equal(first[:, 128:], second[:, 128:])


def test_second_call_reuses_and_foreign_folder_is_refused(builtin, tmp_path):
    root, _ = builtin
    stamp = os.stat(os.path.join(root, MARKER)).st_mtime_ns
    start = time.perf_counter()
    assert builtin_dataroot(root) == root
    assert time.perf_counter() - start < 0.5
    assert os.stat(os.path.join(root, MARKER)).st_mtime_ns == stamp
    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError, match="not a complete fastp2p built-in dataset"):
        builtin_dataroot(str(tmp_path / "mine"))


@pytest.mark.parametrize("mode", ["aligned", "unaligned"])
def test_loads_in_both_modes(builtin, mode):
    root, _ = builtin
    opt = argparse.Namespace(dataroot=root, phase="test", dataset_mode=mode, direction="BtoA", input_nc=3,
                             output_nc=3, preprocess="resize_and_crop", load_size=128, crop_size=128,
                             no_flip=False, serial_batches=False, max_dataset_size=float("inf"), batch_size=4,
                             num_threads=0, isTrain=True, seed=0, device=torch.device("cpu"))
    loader = create_dataset(opt)
    assert len(loader) == 20
    batch = next(iter(loader))
    assert batch["A"].shape == batch["B"].shape == (4, 3, 128, 128)
