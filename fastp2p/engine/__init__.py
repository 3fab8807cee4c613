"""The fast engine: puts a model built by the reference path onto the fast paths a run asked for.

``runtime_for(config, device)`` is what the model is built with (its run-time choices, models/runtime.py);
``prepare_model(model, config)`` then runs each path's hooks at its stage, in a fixed order where each stage keeps
what the earlier ones set up: fusing layers shares the norms' parameters, channels-last converts parameters in
place, the weight copies are made after it (so they copy its layout), the optimizers are built once, over the same
parameters, the step is wrapped, DDP and CUDA graphs wrap what is left. Nothing here changes a network's state_dict
keys, so checkpoints stay the reference's, and nothing writes into the model: the model takes the runtime, and
wraps its own networks in DDP through ``wrap_networks``.
"""

import dataclasses
import inspect

import torch
from torch import nn

from fastp2p.engine.backends import configure_cudnn
from fastp2p.engine.communication import ddp_keywords, gradient_hook
from fastp2p.engine.config import EngineConfig, model_limits, resolve_engine
from fastp2p.engine.optimizers import build_adam
from fastp2p.engine.path import Stage
from fastp2p.engine.precision import grad_scaler
from fastp2p.engine.registry import PATHS
from fastp2p.engine.step import AccumulatedStep, TrainStep
from fastp2p.models.runtime import ModelRuntime

__all__ = ["EngineConfig", "model_limits", "resolve_engine", "runtime_for", "prepare_model"]


def runtime_for(config, device):
    """The ModelRuntime a model is built with under ``config``: each path that is on sets its choices."""
    choices = dict(device=device)
    for path in PATHS:
        if path.runtime is not None and getattr(config, path.name) not in (path.off, None):
            path.runtime(choices, config)
    return ModelRuntime(**choices)


@dataclasses.dataclass
class Preparation:
    """What the hooks of one model's preparation read and leave for the stages after theirs."""

    model: object
    config: EngineConfig
    networks: list
    step: object = None  # the training step, wrapped stage by stage
    step_copies: list = dataclasses.field(default_factory=list)  # --step_cast's copies, one per network
    capture_stream: object = None  # the CUDA graph's capture stream, on which DDP is built

    @property
    def device(self):
        return self.model.device


def run_hooks(prep, stage):
    """Each hook of ``stage`` of the paths that are on, once (--fused_kernels and --fused_conv share one)."""
    done = set()
    for path in PATHS:
        hook = path.hooks.get(stage)
        if hook is not None and hook not in done and getattr(prep.config, path.name) not in (path.off, None):
            hook(prep)
            done.add(hook)


def ddp_wrapper(model, config, capture_stream=None):
    """DistributedDataParallel for a network, set up for GAN training, where a step runs D twice per backward.

    No buffer sync in forward: BatchNorm statistics stay per rank (``--norm batch``; ``--norm syncbatch``
    syncs them in the layer), and no buffer is overwritten in place between D's two forwards of one
    step. Frozen discriminators are called unwrapped in the G step (see the models), so no reduction is
    left pending. Gradients are views into the communication buckets (no copy); how the buckets are sized and
    exchanged is ``config``'s (engine.communication). A run captured as a CUDA
    graph builds DDP on the capture stream and stops DDP's runtime timing after its first 10 iterations: the
    timing events of an iteration sampled during the capture would later be read, and no replay records them.
    """
    device_ids = [model.device.index] if model.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch (2.13 here) renamed broadcast_buffers to forward_sync_buffers; the old name, still accepted, warns and
    # with False also skips the buffer sync at construction. Either way buffers are synced once at init.
    new_name = "forward_sync_buffers" in inspect.signature(ddp).parameters
    no_forward_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}

    def wrap(net):
        with torch.cuda.stream(capture_stream):  # no-op without a stream
            wrapped = ddp(net, device_ids=device_ids, **ddp_keywords(config), **no_forward_sync)
        hook = gradient_hook(config.grad_compression)
        if hook is not None:
            wrapped.register_comm_hook(*hook)
        if capture_stream is not None:
            wrapped._set_ddp_runtime_logging_sample_rate(2**62)
        return wrapped
    return wrap


def wrap_ddp(prep):
    if prep.config.cuda_graph:
        prep.capture_stream = torch.cuda.Stream(prep.device)
    prep.model.wrap_networks(ddp_wrapper(prep.model, prep.config, prep.capture_stream))
    if prep.capture_stream is not None:
        torch.cuda.current_stream().wait_stream(prep.capture_stream)
    for copies in prep.step_copies:
        copies.refresh()  # DDP has broadcast rank 0's weights into the parameters


def prepare_model(model, config, preprocess=None):
    """Apply ``config`` to a model built with ``runtime_for(config, ...)`` whose weights are initialized (or loaded).
    Returns the training step to call with each batch (a TrainStep, wrapped by the paths that wrap it), or None for a
    model that does not train. ``preprocess`` (the run's --preprocess) sets cuDNN's algorithm search."""
    prep = Preparation(model, config, [net for _, net in model.networks()])
    for stage in (Stage.LAYERS, Stage.MEMORY_FORMAT, Stage.WEIGHT_COPIES, Stage.COMPILE):
        run_hooks(prep, stage)
    configure_cudnn(config, preprocess or model.opt.preprocess, model.device)
    if not model.isTrain:
        return None
    model.build_optimizers(lambda params: build_adam(config, params, model.opt.lr, model.opt.beta1, model.device),
                           grad_scaler(config, model.device))
    run_hooks(prep, Stage.OPTIMIZERS)
    prep.step = AccumulatedStep(model) if getattr(model.opt, "accum_steps", 1) > 1 else TrainStep(model)
    run_hooks(prep, Stage.STEP)
    if config.ddp:
        wrap_ddp(prep)
    run_hooks(prep, Stage.GRAPH)
    return prep.step
