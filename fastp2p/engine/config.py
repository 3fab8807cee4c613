"""Which fast paths a run uses: the --amp/--channels_last/... switches resolved against the device.

'auto' turns a path on when training on a GPU and leaves the plain reference path on the CPU. An
explicit 'on' that cannot work (CUDA graphs without a GPU, fp16 on the CPU, fused kernels without
Triton) is an OptionError that says why, never a silent fallback.
"""

import dataclasses
import importlib.util
import os

import torch

from fastp2p import distributed
from fastp2p.errors import OptionError


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    amp_dtype: torch.dtype | None = None
    """autocast dtype; None = fp32"""
    channels_last: bool = False
    fused_kernels: bool = False
    """Triton fused norm + activation and fused GAN/L1 losses"""
    fused_conv: bool = False
    """Triton convs with the norm's statistics in their epilogue and the norm + activation in their prologue"""
    fused_adam: bool = False
    triton_adam: bool = False
    """Adam stepped by one Triton kernel per parameter group, which also writes the step copies (see fastp2p.kernels.adam)"""
    adam_moment_dtype: torch.dtype = torch.float32
    """the dtype of Adam's moments under triton_adam"""
    foreach_cast: bool = False
    """autocast's conv weight casts as one multi-tensor kernel per forward (see weight_cast)"""
    step_cast: bool = False
    """low-precision conv weight copies written by one multi-tensor copy after each optimizer step (see weight_cast)"""
    overlap_optimizer: bool = False
    """each parameter's Adam step runs from its gradient hook during backward (see overlap)"""
    batch_passes: bool = False
    """one forward for a network's independent passes of a step (same math with per-sample norms)"""
    two_streams: bool = False
    """CycleGAN's D_A and D_B updates on two CUDA streams (see streams)"""
    cuda_graph: bool = False
    compile: str | None = None
    """torch.compile's mode for every network ("default", "reduce-overhead", "max-autotune"); None = eager"""
    cudnn_search_all: bool = False
    """cudnn.benchmark times every algorithm cuDNN lists for a convolution, not only its first 10 heuristic picks"""
    ddp: bool = False
    """wrap the networks in DistributedDataParallel (more than one process under torchrun)"""

    def adam(self, params, opt, device):
        """The reference's Adam, torch's (fused and/or capturable) or the Triton kernel's, as this run asks; under
        CUDA graphs its learning rate is a device tensor, which the captured step reads and the LR schedule writes
        in place."""
        lr = torch.tensor(opt.lr, device=device) if self.cuda_graph else opt.lr
        if self.triton_adam:
            from fastp2p.kernels import TritonAdam  # imports Triton

            return TritonAdam(params, lr=lr, betas=(opt.beta1, 0.999), moment_dtype=self.adam_moment_dtype)
        return torch.optim.Adam(params, lr=lr, betas=(opt.beta1, 0.999), fused=self.fused_adam or None,
                                capturable=self.cuda_graph)

    def grad_scaler(self, device):
        """fp16's loss scaler; for every other precision a scaler that does nothing (scale returns the loss,
        step calls optimizer.step), so the model's step has no branch for it."""
        return torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def describe(self):
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+scaler"}[self.amp_dtype]
        on = [name for name in ("channels_last", "fused_kernels", "fused_conv", "fused_adam", "triton_adam",
                                "foreach_cast", "step_cast", "overlap_optimizer", "batch_passes", "two_streams",
                                "cuda_graph", "cudnn_search_all", "ddp")
              if getattr(self, name)]
        on += ["bf16 Adam moments"] if self.adam_moment_dtype == torch.bfloat16 else []
        on += [f"compile ({self.compile})"] if self.compile else []
        plain = self.amp_dtype is None and not on
        return f"engine: {amp}" + (", reference path" if plain else "".join(", " + name for name in on))


PER_SAMPLE_NORMS = ("instance", "none")
"""norms under which a network treats the samples of a batch independently (so passes can be batched)"""


def switch(value, auto):
    return auto if value == "auto" else value == "on"


def resolve_engine(opt, device):
    """The EngineConfig for ``opt`` on ``device``."""
    ddp = distributed.world_size() > 1
    cuda = device.type == "cuda"
    if ddp and not cuda and opt.norm == "syncbatch":
        # torch's SyncBatchNorm syncs GPU tensors only; on the CPU it fails in the first forward
        raise OptionError("--norm syncbatch needs GPUs under DDP; use --norm batch (per-process statistics) "
                          "on the CPU")
    if opt.reference:
        return EngineConfig(ddp=ddp)
    if opt.amp == "auto":
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    else:
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[opt.amp]
    if amp_dtype == torch.float16 and not cuda:
        raise OptionError("--amp fp16 needs a GPU; use --amp bf16 or --amp off on the CPU")

    has_triton = importlib.util.find_spec("triton") is not None
    fused_kernels = switch(opt.fused_kernels, cuda and has_triton and not opt.compile)
    if fused_kernels and opt.compile:
        raise OptionError("--compile with --fused_kernels on is not supported: the pair has no parity test, and "
                          "TorchDynamo would break its graphs at every fused layer; --compile fuses the norms itself, "
                          "so 'auto' leaves the fused kernels off with it")
    if fused_kernels and not has_triton:
        raise OptionError("--fused_kernels on needs Triton: pip install 'fastp2p[triton]'")
    if fused_kernels and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise OptionError("--fused_kernels on the CPU runs in Triton's interpreter (slow, for tests): "
                          "set TRITON_INTERPRET=1 before starting")
    # auto: off until a GPU measurement shows a layer beating cuDNN + the fused norm
    fused_conv = switch(opt.fused_conv, False)
    if fused_conv and (opt.compile or not has_triton or (not cuda and os.environ.get("TRITON_INTERPRET") != "1")):
        raise OptionError("--fused_conv on needs Triton (pip install 'fastp2p[triton]'), no --compile, and on the "
                          "CPU TRITON_INTERPRET=1 (Triton's interpreter: slow, for tests)")

    can_cast = amp_dtype is not None and not opt.compile
    step_cast = switch(opt.step_cast, cuda and can_cast)
    foreach_cast = switch(opt.foreach_cast, cuda and can_cast and not step_cast)
    for name, on in (("foreach_cast", foreach_cast), ("step_cast", step_cast)):
        if on and not can_cast:
            raise OptionError(f"--{name} on needs --amp bf16 or fp16 (it casts for autocast) and no --compile "
                              "(which traces the networks itself)")
    if foreach_cast and step_cast:
        raise OptionError("--foreach_cast on and --step_cast on both make the weights' low-precision copies (per "
                          "forward, per optimizer step): turn one off")

    # 'auto' waits for a GPU measurement that shows the overlap pays for its per-parameter launches
    overlap_optimizer = switch(opt.overlap_optimizer, False)
    overlap_blockers = [reason for reason, blocked in (
        ("fp16's loss scaler checks every gradient for inf before any step", amp_dtype == torch.float16),
        ("DDP averages a gradient after its hook has run, so a step there would read this rank's own", ddp),
    ) if blocked]
    if overlap_optimizer and overlap_blockers:
        raise OptionError(f"--overlap_optimizer on is not possible here: {'; '.join(overlap_blockers)}")

    # 'auto' waits for a GPU measurement that shows the two streams overlap
    two_streams = switch(opt.two_streams, False)
    two_streams_blockers = [reason for reason, blocked in (
        ("it needs a GPU", not cuda),
        ("only CycleGAN has two independent updates (D_A and D_B)", opt.model != "cycle_gan"),
        ("DDP's reducer would all-reduce from the side stream, which is not tested", ddp),
        ("--overlap_optimizer steps on a side stream of its own", overlap_optimizer),
    ) if blocked]
    if two_streams and two_streams_blockers:
        raise OptionError(f"--two_streams on is not possible here: {'; '.join(two_streams_blockers)}")

    # 'auto': torch's Adam until a GPU measurement (bench_adam.py) shows the Triton kernel faster
    triton_adam = opt.adam_kernel == "triton"
    triton_adam_blockers = [reason for reason, blocked in (
        ("it needs Triton (pip install 'fastp2p[triton]')", not has_triton),
        ("on the CPU it runs in Triton's interpreter (slow, for tests): set TRITON_INTERPRET=1 before starting",
         not cuda and os.environ.get("TRITON_INTERPRET") != "1"),
        ("--overlap_optimizer steps each parameter from its own gradient hook, the kernel all of them at once",
         overlap_optimizer),
        ("--fused_adam on asks for torch's fused Adam", opt.fused_adam == "on"),
    ) if blocked]
    if triton_adam and triton_adam_blockers:
        raise OptionError(f"--adam_kernel triton is not possible here: {'; '.join(triton_adam_blockers)}")
    if opt.adam_moments == "bf16" and not triton_adam:
        raise OptionError("--adam_moments bf16 needs --adam_kernel triton (torch's Adam keeps its moments in the "
                          "parameters' dtype)")
    fused_adam = switch(opt.fused_adam, cuda and not triton_adam)
    adam_moment_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opt.adam_moments]

    per_sample_norms = opt.norm in PER_SAMPLE_NORMS
    batch_passes = switch(opt.batch_passes, cuda and per_sample_norms)
    if batch_passes and not per_sample_norms:
        raise OptionError(f"--batch_passes on would change the results of --norm {opt.norm}: BatchNorm normalizes "
                          "over the batch, so one pass over two batches differs from two passes; use --norm "
                          "instance or --batch_passes off")

    graph_blockers = [reason for reason, blocked in (
        ("it needs a GPU", not cuda),
        ("fp16 needs a GradScaler, whose inf checks sync with the host", amp_dtype == torch.float16),
        ("--compile brings its own graphs", opt.compile),
    ) if blocked]
    # Under DDP the captured step holds the gradient all-reduces (see cuda_graph); 'auto' waits for that to be
    # measured on several GPUs, 'on' opts in.
    cuda_graph = switch(opt.cuda_graph, not graph_blockers and not ddp)
    if cuda_graph and graph_blockers:
        raise OptionError(f"--cuda_graph on is not possible here: {'; '.join(graph_blockers)}")
    return EngineConfig(amp_dtype=amp_dtype, channels_last=switch(opt.channels_last, cuda),
                        fused_kernels=fused_kernels, fused_conv=fused_conv, fused_adam=fused_adam,
                        triton_adam=triton_adam, adam_moment_dtype=adam_moment_dtype,
                        foreach_cast=foreach_cast, step_cast=step_cast, overlap_optimizer=overlap_optimizer,
                        batch_passes=batch_passes, two_streams=two_streams,
                        cuda_graph=cuda_graph, compile=opt.compile,
                        cudnn_search_all=switch(opt.cudnn_search_all, cuda), ddp=ddp)
