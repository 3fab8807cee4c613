"""--overlap_optimizer: each parameter's Adam step runs as soon as backward has accumulated its gradient.

After backward, one Adam step reads and writes every parameter and both moments: at batch 1 a sizeable share of
an iteration, in which the GPU does nothing else. Stepped from each parameter's post-accumulate-grad hook instead,
on a side stream on a GPU, the steps of the last layers run while backward still computes the first layers'
gradients (and inside the CUDA graph when the iteration is captured: the hooks run at capture).

The result is that of stepping after backward: a parameter's gradient is final when its hook runs (autograd sums
every use of it in one backward before accumulating), and the models call backward once per optimizer step, with
each parameter in one optimizer. The per-parameter Adam keeps its moments in the model's own optimizer's
``state``, and reads its hyperparameters, the learning rate included, from that optimizer's parameter group at
each step, so checkpoints, resumes and the LR schedule act on the model's optimizer as before.
"""

import torch

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath, Stage


class ParameterAdam(torch.optim.Adam):
    """Adam over one parameter of ``owner`` (a torch Adam), whose ``state`` holds its moments and step."""

    def __init__(self, parameter, owner, group):
        self.owner, self.group = owner, group  # before Adam.__init__, which assigns self.state
        super().__init__([parameter], **{name: group[name] for name in owner.defaults})

    @property
    def state(self):
        return self.owner.state

    @state.setter
    def state(self, _value):
        """Optimizer.__init__ and load_state_dict assign a state of their own: the owner's stays the one."""

    def step(self, closure=None):
        self.param_groups[0]["lr"] = self.group["lr"]  # the owner's group, which the LR schedule writes
        return super().step(closure)


class StepsInBackward:
    """Steps each parameter of ``optimizer`` from its post-accumulate-grad hook (see the module doc); on a GPU on a
    side stream, which ``finish`` joins. ``after_step(parameter)``, if given, runs after each parameter's step."""

    def __init__(self, optimizer, device, after_step=None):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.after_step = after_step
        self.single = {}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                self.single[parameter] = ParameterAdam(parameter, optimizer, group)
                parameter.register_post_accumulate_grad_hook(self.step_parameter)

    def step_parameter(self, parameter):
        if self.stream is None:
            self.run_step(parameter)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        with torch.cuda.stream(self.stream):
            self.run_step(parameter)

    def run_step(self, parameter):
        self.single[parameter].step()
        if self.after_step is not None:
            self.after_step(parameter)

    def finish(self):
        """Called where the model would step the optimizer: every parameter has stepped by now; on a GPU the
        main stream waits for the side stream's steps before the next forward reads the parameters."""
        if self.stream is not None:
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)


def refresh_copy_of(step_copies):
    """What rewrites one parameter's --step_cast copy after its step in backward (None without step copies)."""
    if not step_copies:
        return None

    def refresh(parameter):
        for copies in step_copies:
            copies.refresh_parameter(parameter)
    return refresh


def step_in_backward(prep):
    """Hand each optimizer's parameters to a StepsInBackward, which the model's step() then waits for."""
    after_step = refresh_copy_of(prep.step_copies)
    for optimizer in prep.model.optimizers:
        prep.model.runtime.steps_in_backward[optimizer] = StepsInBackward(optimizer, prep.device, after_step)


OVERLAP_OPTIMIZER = FastPath(
    "overlap_optimizer", "step each parameter's Adam as soon as backward has its gradient (on a side stream on a "
                         "GPU), overlapping the optimizer with the rest of backward; same result as stepping after "
                         "it; not with fp16 or DDP; auto leaves it off until a GPU measurement shows it pays",
    auto=lambda s: False,
    blockers=lambda s, on: [reason for reason, blocked in (
        ("fp16's loss scaler checks every gradient for inf before any step", s.value("amp") == torch.float16),
        ("DDP averages a gradient after its hook has run, so a step there would read this rank's own", s.ddp),
        ("--accum_steps steps once all micro-batches' gradients are in, not after the first backward",
         s.accum_steps > 1),
    ) if blocked] if on else [],
    hooks={Stage.OPTIMIZERS: step_in_backward}, bench_row="overlap_optimizer", replaces=("two_streams",),
    check=Check(REORDERED_FP32, compares="one training iteration against the same path stepping after backward"),
    needs_engine_optimizers=True)
