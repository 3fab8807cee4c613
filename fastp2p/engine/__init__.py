"""The fast engine: puts a model built by the reference path onto the fast paths a run asked for.

Each path is applied to the same model objects, in an order where each step keeps what the earlier
ones set up: fusing layers shares the norms' parameters, channels-last converts parameters in place,
the one-kernel weight casts (or the step-written weight copies) are hooked onto each network (after the
conversion, so they copy its layout), the optimizers are built once, over the same parameters (the step copies
are rewritten after each of their steps), DDP and CUDA graphs wrap what is left. Nothing here changes a network's
state_dict keys, so checkpoints stay the reference's.
"""

import inspect

import torch
from torch import nn

from fastp2p.engine.config import EngineConfig, resolve_engine
from fastp2p.engine.cuda_graph import DeviceImagePool, GraphedTrainStep
from fastp2p.engine.fusion import fuse_network, use_fused_losses
from fastp2p.engine.overlap import StepsInBackward
from fastp2p.engine.step import AutocastStep, TrainStep
from fastp2p.engine.streams import TwoStreams
from fastp2p.engine.weight_cast import StepCopies, cast_conv_parameters_per_forward

__all__ = ["EngineConfig", "resolve_engine", "prepare_model", "TrainStep", "AutocastStep", "GraphedTrainStep"]


def wrap_ddp(model, capture_stream=None):
    """DistributedDataParallel for every network, set up for GAN training, where a step runs D twice per backward.

    No buffer sync in forward: BatchNorm statistics stay per rank (``--norm batch``; ``--norm syncbatch``
    syncs them in the layer), and no buffer is overwritten in place between D's two forwards of one
    step. Frozen discriminators are called unwrapped in the G step (see the models), so no reduction is
    left pending. Gradients are views into the communication buckets (no copy). A run captured as a CUDA
    graph builds DDP on the capture stream and stops DDP's runtime timing after its first 10 iterations: the
    timing events of an iteration sampled during the capture would later be read, and no replay records them.
    """
    device_ids = [model.device.index] if model.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch (2.13 here) renamed broadcast_buffers to forward_sync_buffers; the old name, still accepted, warns and
    # with False also skips the buffer sync at construction. Either way buffers are synced once at init.
    new_name = "forward_sync_buffers" in inspect.signature(ddp).parameters
    no_forward_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
    with torch.cuda.stream(capture_stream):  # no-op without a stream
        for name in model.model_names:
            wrapped = ddp(getattr(model, "net" + name), device_ids=device_ids, gradient_as_bucket_view=True,
                          **no_forward_sync)
            if capture_stream is not None:
                wrapped._set_ddp_runtime_logging_sample_rate(2**62)
            setattr(model, "net" + name, wrapped)
    if capture_stream is not None:
        torch.cuda.current_stream().wait_stream(capture_stream)


def refresh_copy_of(step_copies):
    """What rewrites one parameter's --step_cast copy after its step in backward (None without step copies)."""
    if not step_copies:
        return None

    def refresh(parameter):
        for copies in step_copies:
            copies.refresh_parameter(parameter)
    return refresh


def prepare_model(model, config):
    """Apply ``config`` to a model whose weights are initialized (or loaded). Returns the training step to call
    each iteration (a TrainStep, wrapped by AutocastStep and GraphedTrainStep as the config asks), or None for a
    model that does not train."""
    nets = [net for _, net in model.networks()]
    if config.fused_kernels or config.fused_conv:
        for net in nets:
            fuse_network(net, fused_kernels=config.fused_kernels, fused_conv=config.fused_conv)
    if config.fused_kernels and model.isTrain:
        use_fused_losses(model)
    if config.channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
        model.input_memory_format = torch.channels_last
    if config.foreach_cast:
        for net in nets:
            cast_conv_parameters_per_forward(net, model.device.type)
    step_copies = [StepCopies(net, model.device.type, config.amp_dtype) for net in nets] if config.step_cast else []
    if config.compile:
        for net in nets:
            net.compile(mode=None if config.compile == "default" else config.compile)
    if model.device.type == "cuda":
        # cuDNN lists more algorithms than the 10 benchmark mode times by default; on Hopper the default set can
        # leave older (sm80) kernels in use. Timing them all costs once per shape, at the first iterations.
        torch.backends.cudnn.benchmark_limit = 0 if config.cudnn_search_all else 10
    if not model.isTrain:
        return None
    model.batch_passes = config.batch_passes
    if config.two_streams:
        model.run_independent = TwoStreams(model.device).run
    model.build_optimizers(config)
    if config.overlap_optimizer:
        model.steps_in_backward = {optimizer: StepsInBackward(optimizer, model.device, refresh_copy_of(step_copies))
                                   for optimizer in model.optimizers}
    for copies in step_copies:
        copies.refresh_after_steps_of(model.optimizers)
    step = TrainStep(model)
    if config.amp_dtype is not None:
        step = AutocastStep(step, model.device, config.amp_dtype, model.grad_scaler)
    capture_stream = torch.cuda.Stream(model.device) if config.cuda_graph else None
    if config.ddp:
        wrap_ddp(model, capture_stream)
        for copies in step_copies:
            copies.refresh()  # DDP has broadcast rank 0's weights into the parameters
    if config.cuda_graph:
        for name in model.pool_names:
            pool = getattr(model, name)
            device_pool = DeviceImagePool(pool.pool_size)
            device_pool.load_state_dict(pool.state_dict(), device=model.device)
            setattr(model, name, device_pool)
        step = GraphedTrainStep(model, step, capture_stream, ddp=config.ddp)
    return step
