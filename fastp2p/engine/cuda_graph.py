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
from fastp2p.engine.path import REORDERED_FP32, Check, FastPath, Stage
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


def on_side_stream(stream, fn):
    """fn() on ``stream``, after the work queued so far and before what follows: capture needs lazily made state
    (and cuDNN's algorithm choice) to be made away from the default stream first."""
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        output = fn()
    current.wait_stream(stream)
    return output


def capture_after_warmup(fn, stream, warmups=WARMUP_STEPS):
    """fn() run ``warmups`` times on ``stream``, then captured there: (graph, what fn returned)."""
    for _ in range(warmups):
        on_side_stream(stream, fn)
    return capture(fn, stream)


def capture(fn, stream):
    """fn() recorded as a CUDA graph on ``stream`` (the one its warm-up ran on): (graph, what fn returned, which
    each replay rewrites). Training and inference capture through here."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        output = fn()
    return graph, output


class GraphedTrainStep:
    """Callable that runs ``step`` (a TrainStep, or an AutocastStep around one) on each batch eagerly at first, then
    as a graph replayed from static input buffers it owns: the batch's tensors are copied into them, in the
    model's device and memory format, and the model reads them through its own set_input.

    ``stream`` is the side stream of the warm-up steps and of the capture; under ``ddp`` DDP must be built on it.
    """

    def __init__(self, model, step, stream, ddp=False):
        self.model, self.step, self.stream = model, step, stream
        self.pools = [getattr(model, name) for name in model.pool_names]
        self.runtime, self.batch_size = model.runtime, model.opt.batch_size
        self.warmup_left = DDP_WARMUP_STEPS if ddp else WARMUP_STEPS
        self.graph = None
        self.static = None  # the batch the graph was captured on: its tensors are the graph's input buffers

    def ready_to_capture(self, batch):
        return (self.warmup_left <= 0 and all(pool.is_full() for pool in self.pools)
                and len(next(iter(self.tensors(batch).values()))) == self.batch_size)

    @staticmethod
    def tensors(batch):
        return {key: value for key, value in batch.items() if torch.is_tensor(value)}

    def matches_graph(self, batch):
        static = self.tensors(self.static)
        return all(t.shape == static[key].shape and t.dtype == static[key].dtype
                   for key, t in self.tensors(batch).items())

    def buffers_for(self, batch):
        """The batch with its tensors as new device buffers in the model's memory format (set_input then reads them
        without a copy, inside the capture too)."""
        return {key: value.to(self.runtime.device, memory_format=self.runtime.memory_format).clone()
                if torch.is_tensor(value) else value for key, value in batch.items()}

    def pool_banks(self):
        """The identity of each pool's stored images: a capture must find them built and leave them in place."""
        return [id(pool.bank) for pool in self.pools]

    def __call__(self, batch):
        if self.graph is None:
            if not self.ready_to_capture(batch):
                self.warmup_left -= 1
                on_side_stream(self.stream, lambda: self.step(batch))
                return
            self.static = self.buffers_for(batch)
            banks = self.pool_banks()
            self.graph, _ = capture(lambda: self.step(self.static), self.stream)
            if self.pool_banks() != banks:
                raise RuntimeError("an image pool built its bank inside the CUDA graph's capture: each replay would "
                                   "rebuild it from freed memory")
            distributed.print_main("Recorded CUDA graph of the training iteration")
            return self.graph.replay()
        if not self.matches_graph(batch):
            return self.step(batch)  # e.g. the last, partial batch of an epoch
        for key, fresh in self.tensors(batch).items():
            self.static[key].copy_(fresh, non_blocking=True)
        self.model.set_input({**batch, **self.tensors(self.static)})  # the new paths; no tensor is copied
        self.graph.replay()


def graph_the_step(prep):
    stream = prep.capture_stream or torch.cuda.Stream(prep.device)
    prep.step = GraphedTrainStep(prep.model, prep.step, stream, ddp=prep.config.ddp)


CUDA_GRAPH = FastPath(
    "cuda_graph", "replay each training iteration as one CUDA graph",
    inference_help="replay the generator's forward as one CUDA graph from a static input buffer (a batch of another "
                   "shape, such as the last, runs eagerly)",
    auto=lambda s: not s.ddp,  # under DDP the captured all-reduces wait for a measurement on several GPUs; 'on' opts in
    blockers=lambda s, on: [reason for reason, blocked in (
        ("it needs a GPU", not s.cuda),
        ("fp16 needs a GradScaler, whose inf checks sync with the host", s.value("amp") == torch.float16),
        ("--compile brings its own graphs", s.value("compile") is not None),
        ("--accum_steps runs a step over several micro-batches, not the one captured", s.accum_steps > 1),
    ) if blocked] if on else [],
    hooks={Stage.GRAPH: graph_the_step}, runtime=lambda choices, config: choices.update(image_pool=DeviceImagePool),
    needs_engine_optimizers=True,
    bench_row="cuda_graph", check=Check(REORDERED_FP32, cpu=False, compares=(
        "K graph replays against K eager steps from the same state, with a full image pool, a learning-rate change "
        "and an eager partial batch between replays")))
