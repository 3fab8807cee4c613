"""The torch loader's worker processes: how they start, that every start method yields the same batches, and that
closing the loader ends them (a test or run that leaves processes behind is a bug)."""

import multiprocessing

import pytest
import torch

from fastp2p.data import create_dataset
from tests.test_data import aligned_root, make_opt


def paths_and_pixels(loader):
    return [(batch["A_paths"], batch["A"]) for batch in loader]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_every_start_method_yields_the_spawned_workers_batches(tmp_path, method):
    root = aligned_root(tmp_path, count=5)
    spawned = create_dataset(make_opt(root, num_threads=1))
    assert spawned.dataloader.multiprocessing_context.get_start_method() == "spawn"  # the default
    other = create_dataset(make_opt(root, num_threads=1, worker_start=method))
    try:
        for (paths, pixels), (other_paths, other_pixels) in zip(paths_and_pixels(spawned), paths_and_pixels(other),
                                                                strict=True):
            assert paths == other_paths
            torch.testing.assert_close(pixels, other_pixels, rtol=0, atol=0)
    finally:
        spawned.close()
        other.close()


def test_close_ends_the_persistent_workers(tmp_path):
    loader = create_dataset(make_opt(aligned_root(tmp_path, count=4), num_threads=2))
    before = set(multiprocessing.active_children())
    list(loader)
    assert len(set(multiprocessing.active_children()) - before) == 2  # persistent: alive between epochs
    loader.close()
    assert not set(multiprocessing.active_children()) - before
    loader.close()  # a second close is harmless


def test_workers_of_the_trainers_options_start(tmp_path):
    """The trainer's options carry their argparse parser, which cannot be pickled to a spawned worker."""
    from fastp2p.options import parse_options

    opt = parse_options(["--dataroot", str(aligned_root(tmp_path, count=2)), "--dataset_mode", "aligned",
                         "--num_threads", "1", "--load_size", "72", "--crop_size", "64", "--seed", "1"])
    loader = create_dataset(opt)
    try:
        assert [len(batch["A_paths"]) for batch in loader] == [1, 1]
    finally:
        loader.close()
