"""What pix2pix, CycleGAN and the test model share: setup, I/O of networks, LR stepping, resumable state.

The training step (``optimize_parameters``) of each model keeps its losses as device tensors in
``loss_<name>`` attributes and never reads them; ``get_current_losses`` is the one place they are
copied to the host, on logging iterations only. That keeps the step free of host syncs, so it can later
be captured in a CUDA graph.
"""

import os
import re
import warnings
from collections import OrderedDict

import torch

from fastp2p import checkpoint
from fastp2p.distributed import is_main_process, print_main
from fastp2p.errors import DatasetError, OptionError
from fastp2p.models.runtime import current_runtime
from fastp2p.networks import count_parameters, get_scheduler, image_size_problem, init_of, init_weights


class BaseModel:
    """Subclasses fill the name lists and build ``net<name>`` for each name in ``model_names``. How the step runs is
    ``self.runtime``'s (models/runtime.py): the engine's choices, handed over when the model is built.

    A subclass either names the parameters each optimizer trains (``trained_parameters``), and the engine builds the
    optimizers (its fused or Triton Adam among them), or builds ``self.optimizers`` itself in ``__init__`` as the
    reference's models do, which the engine then keeps (docs/extending.md)."""

    def __init__(self, opt):
        self.opt = opt
        self.isTrain = opt.isTrain
        self.runtime = current_runtime()
        self.device = self.runtime.device
        # the reference's name, which models written for it pass to define_G/define_D: this process's GPU
        self.gpu_ids = [self.device.index or 0] if self.device.type == "cuda" else []
        self.save_dir = os.path.join(opt.checkpoints_dir, opt.name)
        self.loss_names = []
        self.model_names = []
        self.visual_names = []
        self.pool_names = []
        self.optimizers = []
        self.schedulers = []
        self.image_paths = []
        self.metric = 0  # what the plateau policy watches; the reference never changes it either
        self.grad_scaler = None  # build_optimizers sets it: fp16's GradScaler, or one that does nothing

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """A model's own flags and default changes (``parser.add_argument``, ``parser.set_defaults``); none here."""
        return parser

    def networks(self):
        """(name, net) for every network of this model, in the reference's order (G before D)."""
        return [(name, getattr(self, "net" + name)) for name in self.model_names]

    def generator(self):
        """The network that translates (the first of ``model_names``: pix2pix's G, CycleGAN's G_A, the test
        model's G)."""
        return getattr(self, "net" + self.model_names[0])

    def trained_parameters(self):
        """(name, parameters) of each optimizer of a training model, in the reference's order (G before D). A model
        that leaves this out builds its own optimizers (builds_own_optimizers)."""
        raise NotImplementedError

    @classmethod
    def builds_own_optimizers(cls):
        """Whether the model builds ``self.optimizers`` itself, the reference's way, instead of naming their
        parameters: the engine then keeps them, and its paths that replace or capture the optimizers do not apply."""
        return cls.trained_parameters is BaseModel.trained_parameters

    def optimizer_names(self):
        """The name of each of ``self.optimizers`` (G, D): the attribute ``optimizer_NAME`` that holds it, else its
        place in the list."""
        names = {id(value): attribute.removeprefix("optimizer_") for attribute, value in vars(self).items()
                 if attribute.startswith("optimizer") and attribute != "optimizers"}
        return [names.get(id(optimizer), str(i)) for i, optimizer in enumerate(self.optimizers)]

    def build_optimizers(self, make_adam, grad_scaler):
        """``make_adam(params)`` (the engine's Adam: the reference's, or fused/capturable/Triton) for each of
        ``trained_parameters``, the LR schedulers, and the loss scaler: built once, by the engine, after it has
        converted the networks (the conversions keep each parameter object, so the optimizers see the parameters
        the step updates). A model that built its own optimizers keeps them."""
        if self.builds_own_optimizers():
            if not self.optimizers:
                raise OptionError(f"--model {self.opt.model}: {type(self).__name__} trains but has no optimizers: "
                                  f"build self.optimizers in __init__, or define trained_parameters() "
                                  f"(docs/extending.md)")
        else:
            self.optimizers = []
            for name, params in self.trained_parameters():
                optimizer = make_adam(params)
                setattr(self, "optimizer_" + name, optimizer)
                self.optimizers.append(optimizer)
        self.schedulers = [get_scheduler(optimizer, self.opt) for optimizer in self.optimizers]
        self.grad_scaler = grad_scaler

    def wrap_networks(self, wrap):
        """Call each network through ``wrap(net)`` from now on (DDP, an inference runner); ``checkpoint.unwrap``
        reaches the plain module, whose state_dict keys the checkpoints keep."""
        for name in self.model_names:
            setattr(self, "net" + name, wrap(getattr(self, "net" + name)))

    def setup(self, opt):
        """Initialize weights (G before D), load checkpoints when testing or resuming."""
        for _, net in self.networks():
            init_weights(net, *init_of(net, opt.init_type, opt.init_gain))
        if not self.isTrain or opt.continue_train:
            self.load_networks(checkpoint.load_prefix(opt))
        self.print_networks(opt.verbose)

    def set_input(self, data):
        """Take real_A/real_B from a loader batch; ``--direction BtoA`` swaps the two sides."""
        a_to_b = self.opt.direction == "AtoB"
        layout = self.runtime.memory_format
        self.real_A = data["A" if a_to_b else "B"].to(self.device, memory_format=layout, non_blocking=True)
        self.real_B = data["B" if a_to_b else "A"].to(self.device, memory_format=layout, non_blocking=True)
        self.image_paths = data["A_paths" if a_to_b else "B_paths"]
        self.check_image_size(self.real_A)

    def check_image_size(self, images, source=None):
        """A DatasetError naming the options when the networks cannot take this batch's image size; ``source``
        names the images in it (by default the first path of the batch set by set_input)."""
        height, width = images.shape[-2:]
        discriminator = self.isTrain and any(name.startswith("D") for name in self.model_names)
        problem = image_size_problem(self.opt, height, width, discriminator=discriminator)
        if problem:
            raise DatasetError(f"{source or self.image_paths[0]}: images reach the networks as {height}x{width} (after "
                               f"--preprocess {self.opt.preprocess}), but {problem}; use a --crop_size that fits "
                               f"(with a --preprocess that crops), or another network")

    def forward(self):
        raise NotImplementedError

    def optimize_parameters(self):
        raise NotImplementedError

    def optimize_accumulated(self, micro_batches):
        """One optimizer step per optimizer over ``micro_batches`` (models.accumulation.MicroBatches), as one step
        over their concatenation (--accum_steps); a model that defines it says so with ``accumulates``."""
        raise NotImplementedError

    @classmethod
    def accumulates(cls):
        """Whether the model can take an optimizer step over several micro-batches (--accum_steps)."""
        return cls.optimize_accumulated is not BaseModel.optimize_accumulated

    def run_passes(self, net, *inputs):
        """net applied to each of ``inputs``, in order. With batch_passes, as one forward over their
        concatenation: the same math when every layer treats samples independently (the engine allows it
        for per-sample norms only), in fewer and larger kernels, which is what small batches need."""
        if self.runtime.batch_passes and len(inputs) > 1:
            return net(torch.cat(inputs)).split([x.shape[0] for x in inputs])
        return tuple(net(x) for x in inputs)

    def run_independent(self, first, second):
        """first() then second(): two parts of a step that share no network, input or gradient (CycleGAN's D_A and
        D_B updates), which the engine may run on two streams instead (engine.streams.TwoStreams)."""
        self.runtime.run_independent(first, second)

    def backward(self, loss, weight=1.0):
        """loss.backward(), scaled under fp16 (the scaler does nothing otherwise); ``weight``: the micro-batch's share
        of an accumulated step's images (--accum_steps)."""
        if weight != 1.0:
            loss = loss * weight
        self.grad_scaler.scale(loss).backward()

    def step(self, optimizer):
        """optimizer.step() through the scaler, which under fp16 skips steps with inf/NaN gradients. An optimizer
        the engine steps during backward (steps_in_backward) has stepped already: this waits for those steps."""
        if optimizer in self.runtime.steps_in_backward:
            self.runtime.steps_in_backward[optimizer].finish()
        else:
            self.grad_scaler.step(optimizer)

    def eval(self):
        """Eval mode for every net (``--eval`` at test time: BatchNorm running stats, no Dropout)."""
        for _, net in self.networks():
            net.eval()

    def test(self):
        with torch.no_grad():
            self.forward()
            self.compute_visuals()

    def compute_visuals(self):
        """Hook for extra visuals before display; none of the reference's three models needs one."""

    def get_current_visuals(self):
        return OrderedDict((name, getattr(self, name)) for name in self.visual_names)

    def get_current_losses(self):
        """name -> float. Each float() is a device sync, so call this on logging iterations only. A name already
        starting with ``loss_`` (the reference's template lists 'loss_G') is also found under that name."""
        losses = OrderedDict()
        for name in self.loss_names:
            attribute = "loss_" + name
            if not hasattr(self, attribute) and name.startswith("loss_"):
                attribute = name
            value = getattr(self, attribute)  # a tensor, or 0 for a disabled term (identity loss)
            losses[name] = float(value.detach()) if torch.is_tensor(value) else float(value)
        return losses

    @staticmethod
    def set_requires_grad(nets, requires_grad=False):
        """Freeze D while G's loss backpropagates through it, so D gets no gradients from G's step."""
        if not isinstance(nets, (list, tuple)):
            nets = [nets]
        for net in nets:
            for param in net.parameters():
                param.requires_grad = requires_grad

    def update_learning_rate(self):
        """Step every scheduler once (end of epoch) and print the change as the reference does."""
        old_lr = float(self.optimizers[0].param_groups[0]["lr"])  # a tensor under the fast engine
        for scheduler in self.schedulers:
            if self.opt.lr_policy == "plateau":
                scheduler.step(self.metric)
            else:
                step_without_training(scheduler)
        lr = float(self.optimizers[0].param_groups[0]["lr"])
        print_main(f"learning rate {old_lr:.7f} -> {lr:.7f}")

    def network_path(self, epoch, name):
        return os.path.join(self.save_dir, checkpoint.network_filename(epoch, name))

    def network_files(self, epoch):
        """(file name, state_dict) of every net for prefix ``epoch``, in the reference's key layout."""
        return [(checkpoint.network_filename(epoch, name), checkpoint.network_state_dict(net))
                for name, net in self.networks()]

    def nonfinite_networks(self):
        """Names of the nets holding a parameter or buffer that is NaN, infinite, or so large that its square
        overflows fp32 (a run that has diverged). One host sync for all nets."""
        verdicts = torch.stack([is_finite(net) for _, net in self.networks()]).tolist()
        return [name for (name, _), finite in zip(self.networks(), verdicts) if not finite]

    def load_networks(self, epoch):
        """Load ``{epoch}_net_{name}.pth`` into every net; a mismatching file, or one whose weights are not finite
        (saved by a run that had diverged, or damaged: it would train or translate on NaN), raises
        CheckpointError naming it."""
        for name, net in self.networks():
            path = self.network_path(epoch, name)
            print_main(f"loading the model from {path}")
            checkpoint.load_network(net, path, map_location=self.device)
            if not is_finite(net):
                raise checkpoint.CheckpointError(
                    f"the weights of {name} in {path} are not finite (NaN, infinite or overflowing): the run that "
                    f"saved them had diverged, or the file is damaged; use an earlier checkpoint (--epoch)")

    def print_networks(self, verbose):
        if not is_main_process():
            return
        print("---------- Networks initialized -------------")
        for name, net in self.networks():
            if verbose:
                print(net)
            print(f"[Network {name}] Total number of parameters : {count_parameters(net) / 1e6:.3f} M")
        print("-----------------------------------------------")

    def training_state(self):
        """Optimizer, scheduler, image-pool and fp16 loss-scale state: with the weights, all a resumed run needs
        from the model. The loss scale matters: a resumed fp16 run restarting at the initial 65536 would skip
        steps on inf gradients until the scale has come back down."""
        return {
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "image_pools": {name: getattr(self, name).state_dict() for name in self.pool_names},
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler.is_enabled() else None,
        }

    def resume_schedule(self, saved_schedulers):
        """Bring the LR schedule to where the saved run stood, re-derived from the current flags: the saved
        schedulers count the epochs stepped, the schedulers built from the flags are stepped as many times, so
        a raised --n_epochs or --n_epochs_decay extends the run. The plateau policy follows the losses, not the
        epoch count: its saved state is taken as it is."""
        for scheduler, saved in zip(self.schedulers, saved_schedulers):
            if self.opt.lr_policy == "plateau":
                scheduler.load_state_dict(saved)
                continue
            for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                set_lr(group, base_lr)  # the step and cosine policies scale the rate they find
            for _ in range(saved["last_epoch"]):
                step_without_training(scheduler)

    def load_training_state(self, state):
        if len(state["optimizers"]) != len(self.optimizers) or set(state["image_pools"]) != set(self.pool_names):
            raise checkpoint.CheckpointError(
                f"the training state was saved by another model (optimizers {len(state['optimizers'])}, "
                f"pools {sorted(state['image_pools'])}); this one is {type(self).__name__}")
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            current_lrs = [group["lr"] for group in optimizer.param_groups]
            optimizer.load_state_dict(saved)
            for group, lr in zip(optimizer.param_groups, current_lrs):
                saved_lr, group["lr"] = group["lr"], lr  # keep the device tensor a CUDA graph reads
                set_lr(group, saved_lr)
        self.resume_schedule(state["schedulers"])
        for name, saved in state["image_pools"].items():
            getattr(self, name).load_state_dict(saved, device=self.device)
        saved_scaler = state.get("grad_scaler")  # absent in states saved before it was kept
        if self.grad_scaler.is_enabled() and saved_scaler:
            self.grad_scaler.load_state_dict(saved_scaler)


@torch.no_grad()
def is_finite(net):
    """A device bool: whether every parameter and floating-point buffer of ``net`` is finite and its square does not
    overflow fp32."""
    tensors = [*net.parameters(), *(t for t in net.buffers() if t.is_floating_point())]
    return torch.stack([t.float().square().sum() for t in tensors]).isfinite().all()


def set_lr(group, value):
    """Set a param group's rate in place: under CUDA graphs it is a device tensor the captured step reads."""
    if torch.is_tensor(group["lr"]):
        group["lr"].fill_(float(value))
    else:
        group["lr"] = float(value)


def step_without_training(scheduler):
    """Step a scheduler where no optimizer step may have run in this process (a resume re-deriving the schedule,
    or an epoch resumed at its end), without torch's warning that steps are out of order."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()
