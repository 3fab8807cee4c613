"""The fast engine: puts a model built by the reference path onto the fast paths a run asked for.

Each path is applied to the same model objects, in an order where each step keeps what the earlier
ones set up: fusing layers shares the norms' parameters, channels-last converts parameters in place,
the one-kernel weight casts are hooked onto each network (after the conversion, so they copy its layout),
the optimizers are rebuilt over the same parameters, DDP and CUDA graphs wrap what is left. Nothing
here changes a network's state_dict keys, so checkpoints stay the reference's.
"""

import functools
import inspect

import torch
from torch import nn

from fastp2p.engine.config import EngineConfig, resolve_engine
from fastp2p.engine.cuda_graph import DeviceImagePool, GraphedTrainStep
from fastp2p.engine.fusion import fuse_network, use_fused_losses
from fastp2p.engine.weight_cast import cast_conv_parameters_per_forward
from fastp2p.networks import get_scheduler

__all__ = ["EngineConfig", "resolve_engine", "prepare_model"]


def rebuild_optimizers(model, config):
    """Adam over the same parameters, fused and/or capturable, with a tensor LR a graph can read."""
    opt = model.opt
    rebuilt = []
    for optimizer in model.optimizers:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        lr = torch.tensor(opt.lr, device=model.device) if config.cuda_graph else opt.lr
        new = torch.optim.Adam(params, lr=lr, betas=(opt.beta1, 0.999), fused=config.fused_adam or None,
                               capturable=config.cuda_graph)
        for name in ("optimizer_G", "optimizer_D"):
            if getattr(model, name, None) is optimizer:
                setattr(model, name, new)
        rebuilt.append(new)
    model.optimizers = rebuilt
    model.schedulers = [get_scheduler(optimizer, opt) for optimizer in rebuilt]


def autocast_step(step, device, dtype, scaler):
    """Run the training step under autocast; update the fp16 GradScaler once per iteration.

    The whole step is one autocast region, so each weight is cast to bf16 once per iteration and reused
    by every forward of it (CycleGAN runs each generator three times); under a CUDA graph the cast
    copies are captured with the step, inside the region that owns them.
    """

    @functools.wraps(step)
    def run():
        with torch.autocast(device.type, dtype=dtype):
            step()
        if scaler is not None:
            scaler.update()

    return run


def wrap_ddp(model, capture_stream=None):
    """DistributedDataParallel for every network, set up for GAN training (spec performance.md b.6).

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


def prepare_model(model, config):
    """Apply ``config`` to a model whose weights are initialized (or loaded); returns the model."""
    nets = [net for _, net in model.networks()]
    if config.fused_kernels:
        for net in nets:
            fuse_network(net)
        if model.isTrain:
            use_fused_losses(model)
    if config.channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
        model.input_memory_format = torch.channels_last
    if config.foreach_cast:
        for net in nets:
            cast_conv_parameters_per_forward(net, model.device.type)
    if config.compile:
        for net in nets:
            net.compile()
    if not model.isTrain:
        return model
    model.batch_passes = config.batch_passes
    if config.fused_adam or config.cuda_graph:
        rebuild_optimizers(model, config)
    step = model.optimize_parameters
    if config.amp_dtype is not None:
        if config.amp_dtype == torch.float16:
            model.grad_scaler = torch.amp.GradScaler(model.device.type)
        step = autocast_step(step, model.device, config.amp_dtype, model.grad_scaler)
    capture_stream = torch.cuda.Stream(model.device) if config.cuda_graph else None
    if config.ddp:
        wrap_ddp(model, capture_stream)
    if config.cuda_graph:
        for name in model.pool_names:
            pool = getattr(model, name)
            device_pool = DeviceImagePool(pool.pool_size)
            device_pool.load_state_dict(pool.state_dict(), device=model.device)
            setattr(model, name, device_pool)
        step = GraphedTrainStep(model, step, capture_stream, ddp=config.ddp)
    model.optimize_parameters = step
    return model
