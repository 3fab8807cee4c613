"""--channels_last: the networks' parameters and the model's inputs in the channels-last (NHWC) memory format, which
cuDNN's bf16 convolutions and the fused kernels run natively."""

import torch

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath, Stage


def convert(prep):
    for net in prep.networks:
        net.to(memory_format=torch.channels_last)


HELP = "channels-last memory format for nets and inputs"
# found by fastp2p.doctor: on the CPU, torch's InstanceNorm2d backward returns wrong input gradients (relative error
# above 1) for an image alone (batch 1) whose gradient comes channels-last, as a ResnetBlock's last norm gets it
CPU_INSTANCE_NORM = ("on the CPU, torch's InstanceNorm2d backward gives wrong gradients for channels-last gradients of "
                     "single images (CycleGAN's batch 1); use --channels_last off, --fused_kernels on (whose norms "
                     "replace it) or a GPU")


def torch_instance_norm_trains_on_cpu(s):
    """Whether torch's own InstanceNorm2d would run backward on the CPU (the fused kernels replace every one)."""
    return s.training and not s.cuda and s.norm == "instance" and not s.value("fused_kernels")


CHANNELS_LAST = FastPath(
    "channels_last", HELP, auto=lambda s: s.cuda, inference_help=HELP, hooks={Stage.MEMORY_FORMAT: convert},
    blockers=lambda s, on: [CPU_INSTANCE_NORM] if on and torch_instance_norm_trains_on_cpu(s) else [],
    runtime=lambda choices, config: choices.update(memory_format=torch.channels_last),
    bench_row="channels_last", check=Check(REORDERED_FP32))
