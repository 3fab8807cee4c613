"""SHA-256 of every network file that short seeded CPU runs write, per model and engine path: the guard of a change
that must not change behaviour. Run it on the tree before and after the change and compare the two JSON files.

    PYTHONPATH=TREE python benchmarks/fingerprint_checkpoints.py OUT.json

The fused paths run in Triton's interpreter (switched on here), on nets and crops small enough for it: CycleGAN's
fused rows use 16-pixel crops and a one-layer PatchGAN.
"""

import hashlib
import json
import os
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel is defined

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fastp2p import train  # noqa: E402

PATHS = {
    "reference": ["--reference"],
    "fused": ["--fused_kernels", "on"],
    "fused_cl_adam": ["--fused_kernels", "on", "--channels_last", "on", "--fused_adam", "on"],
    "bf16_all": ["--amp", "bf16", "--fused_kernels", "on", "--channels_last", "on", "--foreach_cast", "on"],
    "batch_passes": ["--fused_kernels", "on", "--batch_passes", "on"],  # CycleGAN only: pix2pix uses BatchNorm
}


def write_images(folder, count, size, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(count):
        low = rng.randint(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(low).resize(size, Image.BILINEAR).save(os.path.join(folder, f"{i}.jpg"), quality=95)


def flags(model, path, root):
    common = ["--model", model, "--name", f"{model}_{path}", "--checkpoints_dir", os.path.join(root, "checkpoints"),
              "--gpu_ids", "-1", "--num_threads", "0", "--ngf", "4", "--ndf", "4", "--netG", "resnet_6blocks",
              "--load_size", "32", "--crop_size", "32", "--seed", "7", "--n_epochs", "1", "--n_epochs_decay", "1",
              "--no_tensorboard", "--print_freq", "100", "--display_freq", "100", "--save_epoch_freq", "1"]
    if model == "pix2pix":
        return common + ["--dataroot", os.path.join(root, "aligned"), "--no_dropout"] + PATHS[path]
    small = [] if path == "reference" else ["--load_size", "16", "--crop_size", "16", "--netD", "n_layers",
                                            "--n_layers_D", "1", "--n_epochs_decay", "0"]
    return common + ["--dataroot", os.path.join(root, "unaligned"), "--pool_size", "2"] + small + PATHS[path]


def main(out):
    torch.set_num_threads(1)
    root = tempfile.mkdtemp()
    write_images(os.path.join(root, "aligned", "train"), 4, (64, 32), 0)
    for split, seed in (("trainA", 1), ("trainB", 2)):
        write_images(os.path.join(root, "unaligned", split), 2, (32, 32), seed)
    result = {}
    for model in ("pix2pix", "cycle_gan"):
        for path in PATHS:
            if model == "pix2pix" and path == "batch_passes":
                continue
            name = f"{model}_{path}"
            code = train.main(flags(model, path, root))
            folder = os.path.join(root, "checkpoints", name)
            result[name] = {"rc": code, **{entry: hashlib.sha256(open(os.path.join(folder, entry), "rb").read())
                                           .hexdigest() for entry in sorted(os.listdir(folder)) if "_net_" in entry}}
            print(name, code, flush=True)
            with open(out, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
