"""Scoring a folder of test results (fastp2p.test's, or the reference's test.py's): its images read from disk."""

import os

import numpy as np
import torch

from fastp2p.data import IMG_EXTENSIONS, load_rgb
from fastp2p.errors import DatasetError, MetricError
from fastp2p.metrics.scores import Scores

FEATURE_BATCH = 32  # images per feature-network pass when scoring a folder
FAKE_SUFFIX, REAL_SUFFIX = "_fake_B", "_real_B"


def image_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(IMG_EXTENSIONS))


def results_images(folder):
    """The folder of result images: RESULTS_DIR/images (fastp2p.test, the reference's test.py) or the folder."""
    if not os.path.isdir(folder):
        raise MetricError(f"{folder} is not a folder")
    images = os.path.join(folder, "images")
    return images if os.path.isdir(images) else folder


def read_uint8(path):
    """An image file as a uint8 1x3xHxW tensor."""
    try:
        array = np.asarray(load_rgb(path), dtype=np.uint8)
    except DatasetError as error:
        raise MetricError(str(error)) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def same_size_batches(paths, size=FEATURE_BATCH):
    """Consecutive images as uint8 batches of at most ``size``, a new batch wherever the image size changes."""
    batch = []
    for path in paths:
        image = read_uint8(path)
        if batch and (len(batch) == size or batch[0].shape != image.shape):
            yield torch.cat(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.cat(batch)


def score_folder(folder, real_dir=None, distances=None):
    """Scores of a results folder: its ``*_fake_B`` images against their ``*_real_B`` (pair metrics, and FID/KID
    with ``distances``), or with ``real_dir`` against the images there (FID/KID alone: the sets are unpaired)."""
    images = results_images(folder)
    names = image_files(images)
    if not names:
        raise MetricError(f"no images in {images}")
    fakes = [name for name in names if os.path.splitext(name)[0].endswith(FAKE_SUFFIX)]
    if not fakes:
        raise MetricError(f"no generated images (*{FAKE_SUFFIX}.png) in {images}")
    scores = Scores(distances)
    fake_paths = [os.path.join(images, name) for name in fakes]
    if real_dir is not None:
        if distances is None:
            raise MetricError("--real_dir scores unpaired sets, with FID and KID alone, which --no_fid turns off")
        if not os.path.isdir(real_dir) or not image_files(real_dir):
            raise MetricError(f"--real_dir {real_dir} is not a folder of images")
        add_sets(scores, fake_paths, [os.path.join(real_dir, name) for name in image_files(real_dir)])
        return scores.result()
    pairs = []
    for name, path in zip(fakes, fake_paths):
        stem, ext = os.path.splitext(name)
        real_path = os.path.join(images, stem[: -len(FAKE_SUFFIX)] + REAL_SUFFIX + ext)
        if os.path.isfile(real_path):
            pairs.append((path, real_path))
    if not pairs:
        raise MetricError(f"no pairs in {images}: no *{FAKE_SUFFIX} image has a *{REAL_SUFFIX} image beside it "
                          f"(for unpaired results give the real images with --real_dir)")
    for fake_path, real_path in pairs:
        fake, real = read_uint8(fake_path), read_uint8(real_path)
        if fake.shape != real.shape:
            raise MetricError(f"{os.path.basename(fake_path)} is {fake.shape[3]}x{fake.shape[2]} but "
                              f"{os.path.basename(real_path)} is {real.shape[3]}x{real.shape[2]}")
        scores.add_pairs(fake, real)
    if distances is not None:
        add_sets(scores, [fake for fake, _ in pairs], [real for _, real in pairs])
    return scores.result()


def add_sets(scores, fake_paths, real_paths):
    """The generated and the real images' files into the feature distances, in batches."""
    for paths, real in ((fake_paths, False), (real_paths, True)):
        for batch in same_size_batches(paths):
            scores.add_set(batch, real)
