"""The epoch plan every loader shares: which samples, in which order, with which crops and flips.

The torch path (datasets.py, loader.py) and the fast loaders (gpu_cache.py, dali_loader.py, torchvision_decode.py)
all take their samples from here, so they cannot drift apart:

* the order of an epoch (``shard_indices``): a permutation seeded from ``(seed, epoch)``, or 0..n-1 with
  --serial_batches, split across ranks as ``DistributedSampler`` splits it;
* the draws of one item (``sample_draws``): the unpaired B file and each side's crop/flip, from a
  ``random.Random`` seeded from ``(seed, epoch, index)``, in one fixed order;
* the A|B split (``ab_half``) and the geometry of the reference's resize and crop (``resized_size``, ``crop_box``).

``plan_epoch`` draws a whole epoch ahead from the image headers; planned_loader.py holds the fast loaders' base.
"""

import hashlib
import math
import random
from dataclasses import dataclass, field

import torch

from fastp2p import distributed
from fastp2p.data.transforms import get_params


def mix_seed(*parts):
    """A 64-bit seed from several parts, so (seed, epoch, index) tuples never collide in practice."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_of(opt):
    """``opt.seed``; a caller that never set one (a notebook, a script) gets 0, so runs still replay."""
    seed = getattr(opt, "seed", None)
    return 0 if seed is None else int(seed)


def sample_rng(opt, epoch, index):
    """The ``random.Random`` that makes every random choice for one item of one epoch."""
    return random.Random(mix_seed(seed_of(opt), epoch, index))


def shard_indices(n, epoch, seed, shuffle, rank=0, world_size=1):
    """This rank's share of the epoch's order of ``range(n)``, as ``DistributedSampler(drop_last=False)``."""
    if shuffle:
        generator = torch.Generator().manual_seed(mix_seed(seed, epoch, "order"))
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    padded = (order * math.ceil(total / n))[:total] if n else order
    return padded[rank:total:world_size]


def ab_half(size, half):
    """``(box, (w, h))`` of half 0 (A) or 1 (B) of an A|B file of ``size``; ``box`` is PIL's (left, top, right, bottom).

    A is the left ``int(w / 2)`` columns and B the rest, one column wider when w is odd, as the reference splits it.
    """
    w, h = size
    split = int(w / 2)
    box = (0, 0, split, h) if half == 0 else (split, 0, w, h)
    return box, (box[2] - box[0], h)


def sample_draws(dataset, index, rng, size_of):
    """Yields ``(file index, get_params draw)`` for each side of item ``index``, drawing from ``rng`` in the one
    order every loader uses: unaligned, B's file first (at random, or index % B_size with --serial_batches), then
    A's crop/flip, then B's; aligned, one draw that both halves share.

    ``size_of(path)`` is the (w, h) a draw is made over (an A|B file's A half): the torch datasets decode the file
    there, the fast loaders read its header. Lazy, so a torch dataset finishes A before it opens B.
    """
    opt = dataset.opt
    if dataset.mode == "aligned":
        params = get_params(opt, size_of(dataset.AB_paths[index]), rng)
        yield from ((index, params), (index, params))
    elif dataset.mode == "unaligned":
        b = index % dataset.B_size if opt.serial_batches else rng.randint(0, dataset.B_size - 1)
        a = index % dataset.A_size
        yield a, get_params(opt, size_of(dataset.A_paths[a]), rng)
        yield b, get_params(opt, size_of(dataset.B_paths[b]), rng)
    else:
        yield index, get_params(opt, size_of(dataset.A_paths[index]), rng)


@dataclass
class EpochPlan:
    """One rank's samples for one epoch: per side the file indices and the reference's crop/flip draws.

    Aligned: both sides hold the same file indices and the very same draw dicts (one draw per pair).
    """

    order: list
    files: list = field(default_factory=lambda: [[], []])
    params: list = field(default_factory=lambda: [[], []])

    def __len__(self):
        return len(self.order)

    def batches(self, batch_size, skip_batches=0):
        """(start, stop) of each batch; the last one is partial, as the torch DataLoader's (no drop_last)."""
        for start in range(skip_batches * batch_size, len(self.order), batch_size):
            yield start, min(start + batch_size, len(self.order))


def plan_epoch(dataset, epoch, sizes):
    """This rank's share of an epoch, drawn exactly as the torch path draws it, over the sizes ``sizes(path)``."""
    opt = dataset.opt
    order = shard_indices(len(dataset), epoch, seed_of(opt), not opt.serial_batches,
                          distributed.rank(), distributed.world_size())
    plan = EpochPlan(order)
    for i in order:
        for side, (f, p) in enumerate(sample_draws(dataset, i, sample_rng(opt, epoch, i), sizes)):
            plan.files[side].append(f)
            plan.params[side].append(p)
    return plan


def resized_size(opt, w, h):
    """(w, h) an image of that size has after the reference's deterministic resize step, before its crop.

    Mirrors transforms.transform_image: square resize, scale_width (kept when already at width and tall
    enough), or make_power_2 for --preprocess none; 'crop' alone keeps the size.
    """
    if "resize" in opt.preprocess:
        return opt.load_size, opt.load_size
    if "scale_width" in opt.preprocess:
        if w == opt.load_size and h >= opt.crop_size:
            return w, h
        return opt.load_size, int(max(opt.load_size * h / w, opt.crop_size))
    if opt.preprocess == "none":
        return int(round(w / 4) * 4), int(round(h / 4) * 4)
    return w, h


def crop_box(opt, w, h, pos):
    """(x, y, cw, ch) the reference crops from a resized (w, h) image; the whole image when it does not crop."""
    if "crop" in opt.preprocess and (w > opt.crop_size or h > opt.crop_size):
        return pos[0], pos[1], opt.crop_size, opt.crop_size
    return 0, 0, w, h


def side_geometry(opt, full_size, half, params):
    """Where one side of one sample comes from and what the reference does to it.

    Returns (box, resized, crop, flip): box = (x0, w, h) of the side in the file, resized = (w, h)
    after the deterministic resize, crop = (x, y, w, h) in the resized image, flip a bool.
    """
    w, h = full_size
    x0 = 0
    if half is not None:
        (x0, _, _, _), (w, h) = ab_half(full_size, half)
    resized = resized_size(opt, w, h)
    crop = crop_box(opt, *resized, params["crop_pos"])
    return (x0, w, h), resized, crop, bool(params["flip"]) and not opt.no_flip


def crop_flip_normalize(store, idx, x, y, flip, crop_h, crop_w):
    """Gather a batch of crops from ``store`` (N, H, W, C uint8) in one indexing op; flip rides in the indices.

    Returns (B, C, crop_h, crop_w) float in [-1, 1], channels-last in memory.
    """
    rows = y[:, None] + torch.arange(crop_h, device=store.device)
    cols = torch.arange(crop_w, device=store.device)
    cols = x[:, None] + torch.where(flip[:, None], crop_w - 1 - cols, cols)
    out = store[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
