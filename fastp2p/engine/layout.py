"""--channels_last: the networks' parameters and the model's inputs in the channels-last (NHWC) memory format, which
cuDNN's bf16 convolutions and the fused kernels run natively."""

import torch

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath, Stage


def convert(prep):
    for net in prep.networks:
        net.to(memory_format=torch.channels_last)


HELP = "channels-last memory format for nets and inputs"
CHANNELS_LAST = FastPath(
    "channels_last", HELP, auto=lambda s: s.cuda, inference_help=HELP, hooks={Stage.MEMORY_FORMAT: convert},
    runtime=lambda choices, config: choices.update(memory_format=torch.channels_last),
    bench_row="channels_last", check=Check(REORDERED_FP32))
