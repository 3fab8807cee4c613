"""The training step the loop calls with each batch: one object per way of running the model's step.

``prepare_model`` nests them (``GraphedTrainStep(AutocastStep(TrainStep(model)))`` at most), so what a call does can
be read from the object's type instead of from which attributes an engine replaced.
"""

from fastp2p.models.accumulation import MicroBatches


class TrainStep:
    """The model's own step (D then G, optimizers included) on ``batch``, eager, in the parameters' precision."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch):
        self.model.set_input(batch)
        self.model.optimize_parameters()

    def __repr__(self):
        return f"{type(self).__name__}({type(self.model).__name__})"


class AccumulatedStep(TrainStep):
    """The model's step over a list of loader batches (--accum_steps): each optimizer steps once, after all of them."""

    def __call__(self, batches):
        self.model.optimize_accumulated(MicroBatches(self.model, batches))
