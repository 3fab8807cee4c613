"""Replay a whole training iteration (D step and G step, optimizers included) as one CUDA graph.

At batch 1 an eager iteration is many small kernel launches (benchmarks/count_ops.py counts them per model)
whose CPU cost exceeds the GPU work; one graph replay removes it. What that
asks of the step, and how each is met:
- static inputs: each batch is copied into buffers captured once; a batch of another shape (the last,
  partial batch of an epoch) runs eagerly on the same parameters and optimizer state;
- no host syncs and no host randomness: losses are read only on log steps, dropout draws come from
  device-side Philox state, Adam is capturable with a tensor learning rate (the LR schedule writes it
  in place), and CycleGAN's image pool draws on the device (DeviceImagePool) once it is full;
- state correct after warm-up: the warm-up iterations are real training steps, run eagerly on a side
  stream, so BatchNorm running statistics and Adam moments are exactly those of an eager run;
- under DDP (``--cuda_graph on`` only), the gradient all-reduces are captured with the step: DDP is built
  on the capture stream, warm-up and capture share that stream, and warm-up runs the 11 eager iterations
  DDP needs before capture (its bucket rebuild and its timed first 10 iterations), as torch's CUDA-graph
  notes ask.
"""

import torch

from fastp2p import distributed
from fastp2p.image_pool import ImagePool


class DeviceImagePool(ImagePool):
    """ImagePool whose random swaps, once the pool is full, are drawn and applied on the device.

    Filling is deterministic (the first ``pool_size`` images are stored), so the host knows when it
    ends without looking at device data. Afterwards each image is swapped with a random stored one with
    probability 0.5, as in the reference, using torch's generator instead of python's ``random``.
    The bank of stored images is built by the query that fills the pool (or by a load of a full pool), eagerly:
    built on the first query after it, it would be built inside the CUDA graph captured on that step, and each
    replay would rebuild it from freed memory, losing every swap.
    """

    def __init__(self, pool_size):
        super().__init__(pool_size)
        self.bank = None  # [pool_size, C, H, W] once full

    def is_full(self):
        """Full, and its bank built: from here on a query allocates nothing, as a graph capture needs."""
        return self.pool_size == 0 or self.bank is not None

    def _bank_when_full(self):
        if self.bank is None and self.num_imgs >= self.pool_size:
            self.bank = torch.cat(self.images, 0)
            self.images = []

    def query(self, images):
        if self.pool_size == 0:
            return images
        if self.bank is None:
            returned = super().query(images)
            self._bank_when_full()
            return returned
        returned = []
        for image in images.detach():
            take_old = torch.rand((), device=image.device) > 0.5
            slot = torch.randint(0, self.pool_size, (1,), device=image.device)
            stored = self.bank.index_select(0, slot)[0]
            returned.append(torch.where(take_old, stored, image))
            self.bank.index_copy_(0, slot, torch.where(take_old, image, stored).unsqueeze(0))
        return torch.stack(returned, 0)

    def state_dict(self):
        images = list(self.bank.unbind(0)) if self.bank is not None else list(self.images)
        return {"pool_size": self.pool_size, "num_imgs": self.num_imgs,
                "images": [image if image.dim() == 4 else image.unsqueeze(0) for image in images]}

    def load_state_dict(self, state, device=None):
        super().load_state_dict(state, device)
        self.bank = None
        self._bank_when_full()


WARMUP_STEPS = 3
"""eager iterations before a capture, so that lazily created state (optimizer moments, cuDNN's algorithm choice)
exists before it"""
DDP_WARMUP_STEPS = 11
"""eager DDP iterations before a capture (torch's notes on CUDA graphs with DistributedDataParallel)"""


def capture_after_warmup(fn, device, warmup=WARMUP_STEPS):
    """``fn()`` recorded as a CUDA graph after ``warmup`` eager calls on a side stream (capture needs lazily made
    state, and cuDNN's algorithm choice, to exist first). Returns the graph and what ``fn`` returned during the
    capture: tensors that each replay rewrites."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


class GraphedTrainStep:
    """Callable that runs ``step`` (a TrainStep, or an AutocastStep around one) eagerly at first, then as a graph.

    ``stream`` is the side stream of the warm-up steps and of the capture; under ``ddp`` DDP must be built on it.
    """

    def __init__(self, model, step, stream, ddp=False):
        self.model = model
        self.step = step
        self.stream = stream
        self.warmup_left = DDP_WARMUP_STEPS if ddp else WARMUP_STEPS
        self.graph = None
        self.static_inputs = None

    def ready_to_capture(self, batch):
        pools_full = all(getattr(self.model, name).is_full() for name in self.model.pool_names)
        return self.warmup_left <= 0 and pools_full and batch[0].shape[0] == self.model.opt.batch_size

    def pool_banks(self):
        """The identity of each pool's stored images: a capture must find them built and leave them in place."""
        return [id(getattr(self.model, name).bank) for name in self.model.pool_names]

    def matches_graph(self, batch):
        return all(t.shape == s.shape and t.stride() == s.stride() for t, s in zip(batch, self.static_inputs))

    def run_on_side_stream(self):
        """Eager warm-up away from the default stream, as capture requires of lazily initialized state."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.step()
        torch.cuda.current_stream().wait_stream(self.stream)

    def __call__(self):
        model = self.model
        batch = (model.real_A, model.real_B)
        if self.graph is None:
            if not self.ready_to_capture(batch):
                self.warmup_left -= 1
                self.run_on_side_stream()
                return
            self.static_inputs = tuple(t.clone() for t in batch)
            model.real_A, model.real_B = self.static_inputs
            torch.cuda.synchronize()
            banks = self.pool_banks()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                self.step()
            if self.pool_banks() != banks:
                raise RuntimeError("an image pool built its bank inside the CUDA graph's capture: each replay would "
                                   "rebuild it from freed memory")
            distributed.print_main("Recorded CUDA graph of the training iteration")
        elif self.matches_graph(batch):
            for static, fresh in zip(self.static_inputs, batch):
                static.copy_(fresh, non_blocking=True)
            model.real_A, model.real_B = self.static_inputs
        else:
            self.step()  # e.g. the last, partial batch of an epoch
            return
        self.graph.replay()
