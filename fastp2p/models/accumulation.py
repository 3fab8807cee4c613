"""--accum_steps: one optimizer step over several micro-batches, as one step over their concatenation would take it.

A model's accumulated step (``optimize_accumulated``) walks the micro-batches once per phase of its step through
``MicroBatches.each``, which gives each micro-batch its share of the group (the GAN and L1 losses are means over the
batch, so a micro-batch's loss weighted by its share of the images sums to the larger batch's loss), keeps DDP's
all-reduce for the last micro-batch of a phase (``no_sync`` on the others), and can record the RNG state before a
micro-batch's generator forward and replay it, so a forward run again in a later phase draws the same dropout masks.
The losses a step reports are the weighted sums of its micro-batches' (``add_losses``, ``finish``).
"""

import contextlib

import torch
from torch import nn


def batch_size_of(batch):
    """The number of samples in a loader batch (its first tensor's length)."""
    return next(len(value) for value in batch.values() if torch.is_tensor(value))


def device_rng_state(device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(state, device):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


@contextlib.contextmanager
def without_gradient_sync(nets):
    """DDP's no_sync on each of ``nets`` that is DDP-wrapped: their gradients add up locally, unreduced."""
    with contextlib.ExitStack() as stack:
        for net in nets:
            if isinstance(net, nn.parallel.DistributedDataParallel):
                stack.enter_context(net.no_sync())
        yield


@contextlib.contextmanager
def buffers_kept(net):
    """Run a forward again without counting it twice: ``net``'s buffers (BatchNorm's running statistics) are put back
    as they were on leaving."""
    saved = [buffer.clone() for buffer in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(net.buffers(), saved):
                buffer.copy_(value)


class MicroBatches:
    """The loader batches of one accumulated optimizer step."""

    def __init__(self, model, batches):
        self.model = model
        self.batches = list(batches)
        sizes = [batch_size_of(batch) for batch in self.batches]
        self.weights = [size / sum(sizes) for size in sizes]
        self.rng_states = [None] * len(self.batches)
        self.losses = {}

    def each(self, syncing=(), rng=None, set_input=True):
        """(index, weight) of each micro-batch in order, with the model's input set to it (``set_input``) and
        ``syncing``'s gradients reduced after the last one only. ``rng``: 'record' the RNG state before each, or
        'replay' the recorded one."""
        device = self.model.device
        last = len(self.batches) - 1
        for index, (batch, weight) in enumerate(zip(self.batches, self.weights)):
            if set_input:
                self.model.set_input(batch)
            if rng == "record":
                self.rng_states[index] = device_rng_state(device)
            elif rng == "replay":
                set_device_rng_state(self.rng_states[index], device)
            with without_gradient_sync(syncing if index < last else ()):
                yield index, weight

    def add_losses(self, names, weight):
        """Add ``weight`` times the model's current ``loss_<name>`` to the step's totals."""
        for name in names:
            value = getattr(self.model, "loss_" + name)
            value = value.detach() if torch.is_tensor(value) else value
            self.losses[name] = self.losses.get(name, 0) + weight * value

    def finish(self):
        """Leave the step's totals in the model's ``loss_<name>`` attributes, where the loop reads its losses."""
        for name, total in self.losses.items():
            setattr(self.model, "loss_" + name, total)
