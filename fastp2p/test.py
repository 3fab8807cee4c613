"""Inference entry point: ``python -m fastp2p.test`` with the reference's test flags.

Writes ``results/NAME/<phase>_<epoch>/images/<sample>_<visual>.png`` and an ``index.html`` that shows
each sample's input and outputs side by side, as the reference's test script does. On a GPU the generators
run on the fast engine (bf16 autocast, channels-last, a CUDA graph: see fastp2p.inference) and ``--batch_size N``
runs N images per forward; each image still gets its own files and row. ``--reference``, and the CPU by default,
run the reference's path, which writes the reference's bytes.

The loaders of ``--data_loader`` are not used here: a test pass decodes each image once and stops at
``--num_test``, so the GPU cache (a whole set decoded up front, for many epochs) saves nothing, and DALI's and
torchvision's decoders and resizers do not give PIL's pixels, which the inputs shown beside the outputs are.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from fastp2p import distributed
from fastp2p.data import create_dataset
from fastp2p.data.builtin import builtin_dataroot
from fastp2p.engine import resolve_engine
from fastp2p.errors import DatasetError, UserError
from fastp2p.inference import build_inference
from fastp2p.options import parse_options, save_options
from fastp2p.selfcheck import checked_config
from fastp2p.web_page import HTMLPage, save_visuals


def default_dataroot(opt):
    """The built-in dataset's folder for this model: the whole set, or one side of it for --model test."""
    root = builtin_dataroot()
    if opt.dataset_mode == "single":
        side = "B" if opt.direction == "BtoA" else "A"
        return os.path.join(root, f"{opt.phase}{side}")
    return root


def results_folder(opt):
    folder = os.path.join(opt.results_dir, opt.name, f"{opt.phase}_{opt.epoch}")
    if opt.load_iter > 0:
        folder += f"_iter{opt.load_iter}"
    return folder


def split_samples(visuals, paths):
    """(sample name, visuals of that image alone) for each image of a batch, its visuals copied to the host once."""
    on_host = {label: tensor.detach().cpu() for label, tensor in visuals.items()}
    for i, path in enumerate(paths):
        yield os.path.splitext(os.path.basename(path))[0], {label: t[i:i + 1] for label, t in on_host.items()}


PNG_WRITERS = max(1, min(8, (os.cpu_count() or 2) - 1))
"""threads that encode and write the result PNGs (PIL's zlib encoder releases the GIL) while the next batch runs;
each file has the bytes it has when written in turn"""


def run(opt):
    device = distributed.init_device(opt.gpu_ids)
    config = checked_config(opt, device, resolve_engine(opt, device))  # before anything is written
    if opt.dataroot is None:
        opt = opt.replace(dataroot=default_dataroot(opt))
        print(f"no --dataroot given: using the built-in synthetic dataset at {opt.dataroot}")
    opt = opt.replace(seed=0 if opt.seed is None else opt.seed)
    torch.manual_seed(opt.seed)
    save_options(opt)
    dataset = create_dataset(opt)  # no --data_loader: the reference's pixels, nothing decoded past --num_test
    model, config = build_inference(opt, device, config)
    print(config.describe())
    folder = results_folder(opt)
    page = HTMLPage(folder, f"Experiment = {opt.name}, Phase = {opt.phase}, Epoch = {opt.epoch}")
    path_key = "B_paths" if opt.direction == "BtoA" and opt.dataset_mode != "single" else "A_paths"
    rows = []  # (sample, visual labels, future of its file names), in the page's order
    try:
        with ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="fastp2p-png") as writers:
            for data in dataset:
                if len(rows) >= opt.num_test:
                    break
                if path_key not in data:
                    raise DatasetError(f"the items of --dataset_mode {opt.dataset_mode} have no '{path_key}' (the "
                                       f"image paths the result files are named after): add it to each item")
                model.set_input(data)
                model.test()
                paths = data[path_key][:opt.num_test - len(rows)]
                for path, (sample, visuals) in zip(paths, split_samples(model.get_current_visuals(), paths)):
                    if len(rows) >= 4 * PNG_WRITERS:
                        rows[-4 * PNG_WRITERS][2].result()  # bound the images waiting in memory
                    if len(rows) % 5 == 0:
                        print(f"processing ({len(rows):04d})-th image... {path}")
                    rows.append((sample, list(visuals),
                                 writers.submit(save_visuals, page, visuals, sample, opt.aspect_ratio)))
    finally:
        dataset.close()
    for sample, labels, names in rows:
        page.add_header(sample)
        page.add_images(names.result(), labels, opt.display_winsize)
    page.save()
    print(f"wrote {len(rows)} results to {os.path.join(folder, 'index.html')}")
    return 0


def main(argv=None):
    opt = parse_options(argv, is_train=False)
    try:
        return run(opt)
    except UserError as e:
        print(f"fastp2p.test: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
