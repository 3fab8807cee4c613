"""How DDP exchanges gradients: --grad_compression, --bucket_cap_mb, --static_graph (read by engine.ddp_wrapper).

Every iteration all-reduces each trained network's gradients once (D's in the D step, G's in the G step), whatever
the batch: pix2pix's fp32 gradients are some 200 MB, more than an iteration at batch 1 computes in on a fast GPU once
they cross a network slower than NVLink (docs/scaling.md works it out). Compressing them to bf16 for the all-reduce
halves the bytes, at the price of bf16's rounding: of each rank's gradient, and of the sum, which the ranks add in
bf16 before it is copied back into the fp32 gradients. The bucket size sets how soon backward's first all-reduce
starts and how many are launched; a static graph lets DDP skip re-deriving what each backward produces.
Gradients stay views into DDP's buckets.
"""

import torch
import torch.distributed as dist

from fastp2p.engine.path import FastPath
from fastp2p.flag_types import auto_or_finite_positive_float

WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # what each --grad_compression sends
COMPRESSIONS = tuple(WIRE_DTYPES)


def needs_ddp(flag):
    """The reason a DDP-only option cannot be on in a run of one process."""
    def blockers(s, value):
        return [f"--{flag} acts on DDP's gradient all-reduce, and a single process has none (start the run with "
                f"torchrun and more than one process)"] if value and not s.ddp else []
    return blockers


def bf16_all_reduce(group, bucket):
    """A DDP comm hook: the average of the ranks' bucket of gradients, exchanged in bf16 and written back into the
    bucket (torch's own bf16 hook is refused off NCCL, so the CPU tests could not run it)."""
    group = group or dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(WIRE_DTYPES["bf16"]).div_(dist.get_world_size(group))
    exchange = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def write_back(future):
        return buffer.copy_(future.value()[0])
    return exchange.then(write_back)


def gradient_hook(compression):
    """(state, hook) for DDP.register_comm_hook for a --grad_compression, or None for DDP's built-in fp32 all-reduce."""
    return (None, bf16_all_reduce) if compression == "bf16" else None


def ddp_keywords(config):
    """The DistributedDataParallel arguments of ``config`` besides the device and buffer ones."""
    keywords = dict(gradient_as_bucket_view=True, static_graph=bool(config.static_graph))
    if config.bucket_cap_mb is not None:
        keywords["bucket_cap_mb"] = config.bucket_cap_mb
    return keywords


GRAD_COMPRESSION = FastPath(
    "grad_compression", "the precision of DDP's gradient all-reduce: fp32, or bf16 (half the bytes; the gradients "
                        "rounded to bf16 and summed in bf16, about 3 significant digits); auto = bf16 on GPUs when the "
                        "job spans several machines (a network slower than NVLink), else fp32",
    choices=("auto",) + COMPRESSIONS, values={}, off="fp32", off_flag="fp32",
    auto=lambda s: "bf16" if s.ddp and s.cuda and s.nodes > 1 else "fp32",
    blockers=lambda s, value: needs_ddp("grad_compression")(s, value == "bf16"),
    label=lambda value: "bf16 gradient all-reduce" if value == "bf16" else None)
BUCKET_CAP_MB = FastPath(
    "bucket_cap_mb", "size in MB of DDP's gradient buckets (each one all-reduce, started as soon as backward has "
                     "filled it); auto = DDP's own (25)",
    choices=None, values={}, off=None, off_flag="auto", auto=lambda s: None, blockers=needs_ddp("bucket_cap_mb"),
    flag=dict(type=auto_or_finite_positive_float),
    label=lambda mb: f"{mb:g} MB buckets" if mb is not None else None)
STATIC_GRAPH = FastPath(
    "static_graph", "tell DDP each backward reaches the same parameters in the same order (true of every model's "
                    "step here), so it plans its all-reduces once; auto leaves it off until a GPU measurement shows "
                    "it pays",
    auto=lambda s: False, blockers=lambda s, on: needs_ddp("static_graph")(s, on) + (
        ["--accum_steps keeps the first micro-batches' gradients local (no_sync), which a static graph's reducer "
         "cannot skip"] if on and s.accum_steps > 1 else []))
