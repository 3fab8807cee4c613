"""``python -m fastp2p.export``: a checkpoint's generator as a torch.export program (.pt2) or an ONNX file.

Takes fastp2p.test's flags for the checkpoint and the network (``--name``, ``--epoch``, ``--model``, ``--netG``...)
and exports the generator in eval mode with a dynamic batch dimension. A ResNet generator also takes any height
and width that are multiples of 4 (at least 8); a U-Net is exported for --crop_size images only, as torch.export
specializes its innermost level when it is 1 pixel (at exactly 2**levels) and the reference size is that one.
"""

import importlib.util
import os
import sys

import torch
from torch.export import Dim

from fastp2p.errors import CheckpointError, OptionError
from fastp2p.inference import load_model
from fastp2p.models import ModelRuntime
from fastp2p.networks import UNET_DOWNS, image_size_problem
from fastp2p.options import parse_options

FORMATS = ("pt2", "onnx")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_SIDE = 2**15
MAX_BATCH = 2**16


def add_export_options(parser):
    parser.description = (
        "Export a checkpoint's generator, in eval mode: BatchNorm normalizes with its running statistics and "
        "dropout is off, as fastp2p.test --eval runs it. fastp2p.test without --eval (the reference's default) "
        "normalizes each image by its own BatchNorm statistics and keeps dropout on, so its images differ from the "
        "exported program's for --norm batch or a generator trained with dropout. The batch dimension is dynamic; "
        "a ResNet generator's height and width too (multiples of 4), a U-Net is exported for --crop_size. Of "
        "fastp2p.test's flags, those naming the checkpoint and the network are read; the others are accepted and "
        "unused.")
    p = parser.add_argument_group("export (fastp2p)")
    p.add_argument("--format", default="pt2", choices=FORMATS,
                   help="pt2: a torch.export program (torch.export.load(FILE).module() runs it); onnx: an ONNX file "
                        "(needs the onnx and onnxscript packages)")
    p.add_argument("--out", help="the file to write (required)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                   help="the weights' and the input image's dtype in the exported graph")


def dynamic_shapes(opt):
    """Batch always dynamic; height and width dynamic in steps of 4 for a ResNet generator, fixed for a U-Net."""
    batch = Dim("batch", min=1, max=MAX_BATCH)
    if opt.netG in UNET_DOWNS:
        return ({0: batch},)
    height, width = (Dim(side, min=2, max=MAX_SIDE // 4) for side in ("height_in_4s", "width_in_4s"))
    return ({0: batch, 2: 4 * height, 3: 4 * width},)


def export(opt):
    """Write ``opt.out``; returns its path."""
    if not opt.out:
        raise OptionError("--out FILE is required: the file to write")
    if opt.format == "onnx":
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise OptionError(f"--format onnx needs {' and '.join(missing)}: pip install onnx onnxscript")
    if opt.model == "cycle_gan":
        raise OptionError("--model cycle_gan holds two generators: export one with --model test --model_suffix _A "
                          "(G_A, A to B) or _B")
    problem = image_size_problem(opt, opt.crop_size, opt.crop_size, discriminator=False)
    if problem:
        raise OptionError(f"--crop_size {opt.crop_size}: {problem}")
    opt = opt.replace(gpu_ids=())  # traced on the CPU; the program runs on any device
    ((_, net),) = load_model(opt, ModelRuntime()).networks()  # pix2pix's G, or the test model's G[--model_suffix]
    net = net.eval().to(DTYPES[opt.dtype])
    example = (torch.rand(2, opt.input_nc, opt.crop_size, opt.crop_size, dtype=DTYPES[opt.dtype]) * 2 - 1,)
    folder = os.path.dirname(os.path.abspath(opt.out))
    os.makedirs(folder, exist_ok=True)
    with torch.no_grad():
        if opt.format == "pt2":
            torch.export.save(torch.export.export(net, example, dynamic_shapes=dynamic_shapes(opt)), opt.out)
        else:
            torch.onnx.export(net, example, opt.out, dynamo=True, dynamic_shapes=dynamic_shapes(opt),
                              input_names=["image"], output_names=["translated"], external_data=False)  # one file
    print(f"wrote {opt.out} ({opt.format}, {opt.dtype}, eval mode)")
    return opt.out


def main(argv=None):
    opt = parse_options(argv, is_train=False, prog="fastp2p.export", add_options=add_export_options)
    try:
        export(opt)
    except (CheckpointError, OptionError) as e:
        one_line = "; ".join(line.strip() for line in str(e).splitlines())  # a mismatch lists its keys on lines
        print(f"fastp2p.export: error: {one_line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
