"""The fork-after-threads hazard of issue-sized suites, in one process started by tests/test_data.py.

A DALI pipeline is built, used and dropped without being closed (as a test or a user script may), so it
lingers as cyclic garbage. Then the product's loader runs one worker over a dataset that collects garbage
and fails, as a worker reading a corrupt file may. A forked worker inherits the pipeline without DALI's
threads and hangs in its destructor; a worker that inherits nothing raises the dataset's error.

``python tests/loader_hazard.py ROOT [WORKER_START]``: ROOT holds an aligned ``train/`` folder.
"""

import gc
import sys

import torch
from test_data import make_opt  # this script's folder, tests/, is first on sys.path

from fastp2p.data.dali_loader import DALILoader
from fastp2p.data.loader import DataLoaderWrapper
from fastp2p.errors import DatasetError


class CollectingDataset(torch.utils.data.Dataset):
    """Runs the garbage collector first, as any allocation in a worker may, then fails as a corrupt file does."""

    def __len__(self):
        return 2

    def __getitem__(self, item):
        gc.collect()
        raise DatasetError(f"cannot read image {item}.png")  # a dataset of its own __getitem__ gets plain indices


def main(root, worker_start=None):
    gc.disable()  # the leaked pipeline must outlive this process's own collections, as it can in a long run
    leaked = DALILoader(make_opt(root), device_id=None, num_threads=2)
    next(iter(leaked))
    del leaked
    opt = make_opt(root, num_threads=1, batch_size=1, serial_batches=True)
    if worker_start:
        opt.worker_start = worker_start
    try:
        list(DataLoaderWrapper(opt, CollectingDataset()))
    except DatasetError as error:
        print(f"DatasetError: {error}")


if __name__ == "__main__":
    main(*sys.argv[1:])
