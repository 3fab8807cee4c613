"""--amp: the whole training step under autocast, in bf16 (fp16 with a loss scaler where a GPU has no bf16)."""

import torch

from fastp2p.engine.path import LOW_PRECISION, Check, FastPath, Stage

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+scaler"}


class AutocastStep:
    """``step`` under autocast, then the loss scaler's once-per-iteration update (it does nothing unless fp16).

    The whole step is one autocast region, so each weight is cast once per iteration and reused by every forward
    of it (CycleGAN runs each generator three times); under a CUDA graph the casts are captured with the step."""

    def __init__(self, step, device, dtype, scaler):
        self.step, self.device, self.dtype, self.scaler = step, device, dtype, scaler

    def __call__(self, batch):
        with torch.autocast(self.device.type, dtype=self.dtype):
            self.step(batch)
        self.scaler.update()

    def __repr__(self):
        return f"AutocastStep({self.step!r}, {self.dtype})"


def grad_scaler(config, device):
    """fp16's loss scaler; for every other precision a scaler that does nothing (scale returns the loss, step calls
    optimizer.step), so the model's step has no branch for it."""
    return torch.amp.GradScaler(device.type, enabled=config.amp == torch.float16)


def autocast_step(prep):
    prep.step = AutocastStep(prep.step, prep.device, prep.config.amp, prep.model.grad_scaler)


HELP = "mixed precision; auto = bf16 where the GPU has it, else fp16 with a GradScaler"
AMP = FastPath(
    "amp", HELP, choices=("auto", "off", "bf16", "fp16"),
    values={"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}, off=None,
    auto=lambda s: (torch.bfloat16 if s.bf16() else torch.float16) if s.cuda else None,
    blockers=lambda s, value: [reason for reason, blocked in (
        ("fp16 needs a GPU; use --amp bf16 or --amp off on the CPU", not s.cuda),
        (f"fp16 needs the loss scaler, which --model {s.model} does not call (it steps its own optimizers): use "
         f"--amp bf16, or self.backward(loss) and self.step(optimizer) in the model", s.own_optimizers),
    ) if blocked] if value == torch.float16 else [],
    inference_help=HELP, hooks={Stage.STEP: autocast_step},
    label=lambda value: None,  # the engine line starts with the precision instead
    bench_row="amp", turn_on=("--amp", "bf16"), check=Check(LOW_PRECISION, needs=()))
