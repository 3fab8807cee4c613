"""``create_dataset(opt)``: the reference's dataset + DataLoader wrapper, with seeded, resumable order.

The epoch's order is a permutation from a ``torch.Generator`` seeded from ``(opt.seed, epoch)`` (or
0..n-1 with ``--serial_batches``), split across torch.distributed ranks as ``DistributedSampler``
splits it (padded by wrapping around so every rank gets the same count): the epoch plan's order
(plan.shard_indices), the fast loaders' too. The sampler hands the dataset ``(epoch, index)`` so
per-item randomness is seeded too (see datasets.py).
``set_epoch(epoch, skip_batches=k)`` starts the next pass at batch k of that epoch's order, which is how
a run interrupted mid-epoch resumes on exactly the batches it had not yet seen.

Workers start with ``spawn`` by default (``--worker_start``): a fresh interpreter inherits nothing of the
trainer's, whereas a forked worker inherits every object and lock of a process that runs threads (DALI's
executors, Triton, TensorBoard's writer, CUDA) without the threads that would release them, and can hang
in a garbage-collected DALI pipeline or a half-held lock. The price is paid once per run, as the workers
are persistent. Whatever the start method, a worker never outlives its trainer, and stop signals reach the
trainer alone (fastp2p/worker_lifetime.py).
"""

import contextlib
import math
import signal

import torch
import torch.utils.data

from fastp2p.errors import DatasetError
from fastp2p.worker_lifetime import WORKER_DEATHS, worker_context

from .. import distributed
from .datasets import takes_epoch_items
from .modes import find_dataset
from .image_folder import mixed_sizes_error
from .plan import mix_seed, seed_of, shard_indices


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` in the seeded order of the current epoch, from a chosen sample on; the index alone
    for a dataset written for the reference (``with_epoch`` False)."""

    def __init__(self, n, seed, shuffle, rank, world_size, with_epoch=True):
        self.n, self.seed, self.shuffle, self.with_epoch = n, seed, shuffle, with_epoch
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        indices = shard_indices(self.n, self.epoch, self.seed, self.shuffle, self.rank, self.world_size)
        skip, self.skip = self.skip, 0  # a resume point applies to the next pass only
        if not self.with_epoch:
            return iter(indices[skip:])
        return iter([(self.epoch, index) for index in indices[skip:]])

    def __len__(self):
        return math.ceil(self.n / self.world_size)


class DataLoaderWrapper:
    """What ``create_dataset`` returns: iterate it for batches; ``len()`` is samples per epoch (reference)."""

    def __init__(self, opt, dataset, device=None):
        self.opt = opt
        self.dataset = dataset
        self.sampler = EpochSampler(len(dataset), seed_of(opt), shuffle=not opt.serial_batches,
                                    rank=distributed.rank(), world_size=distributed.world_size(),
                                    with_epoch=takes_epoch_items(dataset))
        workers = int(opt.num_threads)
        self.dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_size=opt.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device is not None and device.type == "cuda",
            persistent_workers=workers > 0,
            multiprocessing_context=worker_context(getattr(opt, "worker_start", "spawn")) if workers > 0 else None,
            drop_last=False,
            # A private generator: making an iterator must not consume the global torch RNG, or a
            # resumed run's dropout/init draws would shift by one.
            generator=torch.Generator().manual_seed(mix_seed(seed_of(opt), "workers")),
            collate_fn=collate_same_size,
        )

    def set_epoch(self, epoch, skip_batches=0):
        """Use ``epoch``'s order (and per-item draws); the next pass starts at batch ``skip_batches``."""
        self.dataset.epoch = epoch
        self.sampler.set_epoch(epoch, skip_batches * self.opt.batch_size)

    def __len__(self):
        return int(min(len(self.dataset), self.opt.max_dataset_size))

    @property
    def batches_per_epoch(self):
        """Batches this process sees in a full epoch (its shard under torch.distributed)."""
        return len(self.dataloader)

    def __iter__(self):
        batches = self.fetch(iter, self.dataloader)
        while True:
            try:
                batch = self.fetch(next, batches)
            except StopIteration:
                return
            yield batch

    def fetch(self, step, source):
        """``step(source)`` (start or resume the workers, or take a batch), a worker's error said in one line."""
        try:
            with WORKER_DEATHS.fetch() if self.dataloader.num_workers else contextlib.nullcontext():
                return step(source)
        except DatasetError as error:
            raise DatasetError(worker_message(str(error))) from None
        except RuntimeError:
            killed = self.killed_worker()
            if killed is None:
                raise
            raise DatasetError(f"DataLoader worker (pid {killed.pid}) was killed by "
                               f"{signal.Signals(-killed.exitcode).name}: if memory ran out (the kernel's "
                               f"out-of-memory killer sends SIGKILL), lower --num_threads or --batch_size, or free "
                               f"memory; otherwise --num_threads 0 shows the error in the trainer itself") from None

    def killed_worker(self):
        """The first of this loader's workers that a signal ended, if any."""
        workers = getattr(self.dataloader._iterator, "_workers", ())  # where torch keeps the worker processes
        return next((worker for worker in workers if (worker.exitcode or 0) < 0), None)

    def close(self):
        """Stop the persistent workers now, not whenever the garbage collector reaches their iterator."""
        workers = self.dataloader._iterator  # where torch keeps the persistent workers' iterator
        if workers is not None:
            workers._shutdown_workers()  # what torch's own finalizer calls; safe to call twice


def collate_same_size(samples):
    """torch's default collate, after checking that the batch's images have one size: stacking them would fail
    with a bare RuntimeError (or, in a worker, a storage resize error) that names neither file nor option."""
    for key, value in samples[0].items():
        if torch.is_tensor(value) and any(sample[key].shape != value.shape for sample in samples):
            paths_key = f"{key}_paths" if f"{key}_paths" in samples[0] else "A_paths"
            sizes = ", ".join(f"{sample[paths_key]}: {'x'.join(map(str, sample[key].shape[-2:]))}"
                              for sample in samples)
            raise mixed_sizes_error(sizes)
    return torch.utils.data.default_collate(samples)


def worker_message(text):
    """A DatasetError re-raised from a worker carries the worker's traceback: keep only our message."""
    marker = "DatasetError: "
    return text[text.rindex(marker) + len(marker):].strip() if marker in text else text


def create_dataset(opt, device=None):
    """Build the dataset for ``opt.dataset_mode`` and its loader (memory pinned for a GPU ``device``); bad data
    raises DatasetError now."""
    dataset = find_dataset(opt.dataset_mode)(opt)
    distributed.print_main(f"dataset [{type(dataset).__name__}] was created")
    return DataLoaderWrapper(opt, dataset, device)
