"""The training step the loop calls: one object per way of running the model's ``optimize_parameters``.

``prepare_model`` picks and nests them (``GraphedTrainStep(AutocastStep(TrainStep(model)))`` at most), so what a
call does can be read from the object's type instead of from which attributes an engine replaced.
"""

import torch


class TrainStep:
    """The model's own step (D then G, optimizers included), eager, in the parameters' precision."""

    def __init__(self, model):
        self.model = model

    def __call__(self):
        self.model.optimize_parameters()

    def __repr__(self):
        return f"{type(self).__name__}({type(self.model).__name__})"


class AutocastStep:
    """``step`` under autocast, then the loss scaler's once-per-iteration update (it does nothing unless fp16).

    The whole step is one autocast region, so each weight is cast once per iteration and reused by every forward
    of it (CycleGAN runs each generator three times); under a CUDA graph the casts are captured with the step."""

    def __init__(self, step, device, dtype, scaler):
        self.step, self.device, self.dtype, self.scaler = step, device, dtype, scaler

    def __call__(self):
        with torch.autocast(self.device.type, dtype=self.dtype):
            self.step()
        self.scaler.update()

    def __repr__(self):
        return f"AutocastStep({self.step!r}, {self.dtype})"
