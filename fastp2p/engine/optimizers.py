"""The optimizer paths: torch's fused Adam (--fused_adam), the Triton Adam (--adam_kernel triton) and its bf16
moments (--adam_moments), and the one factory that builds the Adam a run asks for."""

import torch

from fastp2p.engine.fusion import triton_blockers
from fastp2p.engine.path import LOW_PRECISION, REORDERED_FP32, Check, FastPath


def build_adam(config, params, lr, beta1, device):
    """The reference's Adam, torch's (fused and/or capturable) or the Triton kernel's, as ``config`` asks; under
    CUDA graphs its learning rate is a device tensor, which the captured step reads and the LR schedule writes in
    place."""
    lr = torch.tensor(lr, device=device) if config.cuda_graph else lr
    if config.adam_kernel == "triton":
        from fastp2p.kernels import TritonAdam  # imports Triton

        return TritonAdam(params, lr=lr, betas=(beta1, 0.999), moment_dtype=config.adam_moments)
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=config.fused_adam or None,
                            capturable=config.cuda_graph)


FUSED_ADAM = FastPath(
    "fused_adam", "torch.optim.Adam(fused=True) with a tensor learning rate",
    auto=lambda s: s.cuda and s.value("adam_kernel") != "triton", bench_row="fused_adam", check=Check(REORDERED_FP32),
    needs_engine_optimizers=True)


def triton_adam_blockers(s, kernel):
    if kernel != "triton":
        return []
    return triton_blockers(s) + [reason for reason, blocked in (
        ("--overlap_optimizer steps each parameter from its own gradient hook, the kernel all of them at once",
         s.value("overlap_optimizer")),
        ("--fused_adam on asks for torch's fused Adam", s.asked("fused_adam") == "on"),
    ) if blocked]


ADAM_KERNEL = FastPath(
    "adam_kernel", "what steps Adam: torch's (fused with --fused_adam), or one Triton kernel per step that also writes "
                   "--step_cast's low-precision weight copies (no separate copy kernel); same math and checkpoints; "
                   "not with --overlap_optimizer; auto = torch until a GPU measurement shows triton is faster",
    choices=("auto", "torch", "triton"), values={}, off="torch", off_flag="torch", auto=lambda s: "torch",
    blockers=triton_adam_blockers, label=lambda kernel: "triton_adam" if kernel == "triton" else None,
    bench_row="triton_adam", turn_on=("--adam_kernel", "triton"), replaces=("fused_adam", "overlap_optimizer"),
    check=Check(REORDERED_FP32), needs_engine_optimizers=True)
ADAM_MOMENTS = FastPath(
    "adam_moments", "with --adam_kernel triton: Adam's moments in fp32 (the reference) or bf16 (half their memory "
                    "traffic, rounded moments)",
    choices=("fp32", "bf16"), default="fp32", values={"fp32": torch.float32, "bf16": torch.bfloat16},
    off=torch.float32, off_flag="fp32", auto=lambda s: torch.float32,
    blockers=lambda s, moments: ["it needs --adam_kernel triton (torch's Adam keeps its moments in the parameters' "
                                 "dtype)"] if moments == torch.bfloat16 and s.value("adam_kernel") != "triton" else [],
    label=lambda moments: "bf16 Adam moments" if moments == torch.bfloat16 else None,
    turn_on=("--adam_moments", "bf16"), check=Check(LOW_PRECISION, needs=("--adam_kernel", "triton")))
