"""Inference on the fast engine, and the generator of a checkpoint folder as a Python function.

``fastp2p.test`` and :class:`Translator` load a model and put its generators on the engine the same way
(``build_inference``): under ``--amp`` autocast, channels-last, and with ``--cuda_graph`` one
CUDA graph per generator replayed from a static input buffer. ``--reference`` (the CPU default) leaves the networks
as the reference runs them.

Batches of several images. At batch 1 a BatchNorm in training mode (the reference's test without ``--eval``)
normalizes each image by its own statistics; a batch would mix them. With ``--batch_size`` above 1 such layers
normalize each image alone (``PerSampleBatchNorm``), so the images do not depend on the batch size: bit for bit on
the CPU in fp32 where oneDNN runs one convolution algorithm for every batch size (it does at 128 x 128; on 32 x 32
images it picks others by batch size, and the floats differ by about 2e-5). Dropout in training mode (no ``--eval``
and no ``--no_dropout``) draws its masks per batch, so there the images are other random draws than at batch 1.

    translate = Translator("checkpoints/builtin_pix2pix")   # flags from its train_opt.txt
    photo = translate("label_map.png")                      # a PIL image of --crop_size pixels
"""

import os
import random

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastp2p import distributed
from fastp2p.data import load_rgb
from fastp2p.data.transforms import get_params, transform_image
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.engine.cuda_graph import capture_after_warmup
from fastp2p.errors import CheckpointError, OptionError
from fastp2p.models import create_model
from fastp2p.options import parse_options, read_train_options
from fastp2p.web_page import tensor2im


def load_model(opt, runtime):
    """The model of ``opt``, built on ``runtime``, with its checkpoint loaded (diverged weights are refused there)."""
    model = create_model(opt, runtime)
    model.setup(opt)
    if opt.eval:
        model.eval()
    return model


class PerSampleBatchNorm(nn.Module):
    """A BatchNorm that, in training mode, normalizes each image by its own statistics, as it does at batch 1.

    ``F.instance_norm`` is batch_norm over the batch folded into the channels: the same kernel and arithmetic as
    batch_norm on one image. Running statistics are not updated (inference never reads them in training mode)."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        if not self.training:
            return self.norm(x)
        return F.instance_norm(x, weight=self.norm.weight, bias=self.norm.bias, eps=self.norm.eps)


def normalize_per_sample(net):
    """Put every BatchNorm of ``net`` inside a PerSampleBatchNorm."""
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, PerSampleBatchNorm(child))
        else:
            normalize_per_sample(child)


class FastGenerator(nn.Module):
    """A generator run as the engine config asks: autocast, channels-last input, a CUDA graph per input shape seen
    first (later shapes run eagerly). The graph's output buffer is rewritten by each replay, so a copy is returned."""

    def __init__(self, net, config, device):
        super().__init__()
        self.net = net
        self.device, self.dtype = device, config.amp
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.use_graph = config.cuda_graph
        self.graph = self.static_input = self.static_output = None

    def run(self, x):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.net(x)

    def capture(self, x):
        self.static_input = x.clone()
        self.graph, self.static_output = capture_after_warmup(lambda: self.run(self.static_input),
                                                              torch.cuda.Stream(self.device))

    def forward(self, x):
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        if not self.use_graph:
            return self.run(x)
        if self.graph is None:
            self.capture(x)
        elif x.shape == self.static_input.shape:
            self.static_input.copy_(x)
        else:
            return self.run(x)
        self.graph.replay()
        return self.static_output.clone()


def build_inference(opt, device, config=None):
    """The model of ``opt`` with its checkpoint loaded, its generators on the engine ``opt`` asks for (or
    ``config``): (model, EngineConfig). With --batch_size above 1 each BatchNorm normalizes each image alone
    (PerSampleBatchNorm)."""
    config = config or resolve_engine(opt, device)
    model = load_model(opt, runtime_for(config, device))
    prepare_model(model, config)
    for _, net in model.networks():
        if opt.batch_size > 1:
            normalize_per_sample(net)
    if config.amp is not None or config.channels_last or config.cuda_graph:
        model.wrap_networks(lambda net: FastGenerator(net, config, device))
    return model, config


def checkpoint_options(folder, epoch="latest", generator=None, flags=None):
    """fastp2p.test's options for the generator ``generator`` (G of pix2pix; G_A or G_B of CycleGAN, default G_A) in
    the checkpoint folder ``folder``: ``flags`` (option name -> value; True for a switch) over what fastp2p.test takes
    from its train_opt.txt (options/inherit.py), --load_size = --crop_size unless given (the test's plain resize)."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder} is not a checkpoint folder")
    saved = read_train_options(folder) if os.path.isfile(os.path.join(folder, "train_opt.txt")) else {}
    generator = generator or ("G_A" if saved.get("model") == "cycle_gan" else "G")
    values = dict(flags or {})
    values.setdefault("load_size", values.get("crop_size", saved.get("crop_size", 256)))
    values.setdefault("gpu_ids", "0" if torch.cuda.is_available() else "-1")
    if generator not in ("G", "G_A", "G_B"):
        raise OptionError(f"generator {generator!r}: name G (pix2pix), G_A or G_B (CycleGAN)")
    argv = ["--model", "test", "--model_suffix", generator[1:], "--checkpoints_dir", os.path.dirname(folder),
            "--name", os.path.basename(folder), "--epoch", str(epoch)]
    for key, value in values.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    try:
        return parse_options(argv, is_train=False, prog="fastp2p.inference")
    except SystemExit:
        raise OptionError(f"these flags do not parse (see the message above): {' '.join(argv)}") from None


class Translator:
    """A trained generator as a function, with fastp2p.test's preprocessing and result bytes.

    ``Translator(folder, epoch="latest", generator=None, **flags)``: ``flags`` are fastp2p.test's options (``amp``,
    ``channels_last``, ``cuda_graph``, ``reference``, ``eval``, ``batch_size``, ``gpu_ids``, network flags...).
    Call it with a PIL image or an image path (returns a PIL image), a list of them (returns a list), or a batch
    tensor N x C x H x W in [-1, 1], already preprocessed (returns the output tensor, float32, on the model's
    device). An image is the generator's input: for a run trained with --direction BtoA, a B image. Images are
    resized as the test resizes them (to --load_size; when that is larger than --crop_size,
    cropped by one fixed draw, where fastp2p.test draws each image's crop from its index), grayscale when --input_nc
    is 1, and run --batch_size at a time.
    """

    def __init__(self, folder, epoch="latest", generator=None, **flags):
        self.opt = opt = checkpoint_options(folder, epoch, generator, flags)
        self.model, self.config = build_inference(opt, distributed.init_device(opt.gpu_ids))

    @torch.no_grad()
    def run(self, batch):
        return self.model.generator()(batch.to(self.model.device)).float()

    def preprocess(self, image):
        """A PIL image or path -> the tensor fastp2p.test feeds the generator (one fixed crop draw)."""
        image = load_rgb(image) if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
        params = get_params(self.opt, image.size, random.Random(0))
        return transform_image(image, self.opt, params, grayscale=self.opt.input_nc == 1)

    def __call__(self, images):
        if torch.is_tensor(images):
            return self.run(images)
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        results = []
        for start in range(0, len(images), self.opt.batch_size):
            chunk = images[start:start + self.opt.batch_size]
            batch = torch.stack([self.preprocess(image) for image in chunk])
            first = chunk[0]
            self.model.check_image_size(batch, source=str(first) if isinstance(first, (str, os.PathLike)) else "image")
            output = self.run(batch).cpu()
            results += [Image.fromarray(tensor2im(output[i:i + 1])) for i in range(len(chunk))]
        return results[0] if single else results
