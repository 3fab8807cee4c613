"""The pair metrics: L1, PSNR and SSIM of generated/real uint8 NCHW RGB batches, one value an image.

They score 8-bit RGB, the bytes a result PNG holds (``to_uint8`` makes them from a generator's output), so a score
during training and a score of the saved results agree.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F

from fastp2p.errors import MetricError

PSNR_CAP = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# SSIM runs on tiles of at most SSIM_TILE x SSIM_TILE output pixels, as many images' tiles a pass as hold at most
# SSIM_TILE_ELEMENTS float64 input values (one image's tile always goes, even if larger). Each intermediate is
# then at most 32 MiB and a pass holds about eleven at once, under 400 MiB whatever the image size; a 3-channel
# tile (3 x 1034 x 1034 values) fits, so an image up to 1034 px a side is one tile, its map computed whole.
SSIM_TILE = 1024
SSIM_TILE_ELEMENTS = 2 ** 22


def to_uint8(images):
    """A [-1, 1] float NCHW batch as uint8 RGB, the bytes a result PNG of fastp2p or the reference holds.

    As the reference, ``(x + 1) / 2 * 255`` in float32 is truncated, not rounded; values are clamped to
    [-1, 1] first (the reference's uint8 cast would wrap them) and NaN becomes 0. Grayscale is tiled to RGB.
    """
    images = images.detach().float().nan_to_num(nan=-1.0).clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return ((images + 1) / 2.0 * 255.0).to(torch.uint8)


def check_pair(fake, real):
    if fake.shape != real.shape:
        raise MetricError(f"generated and real images differ in size: {tuple(fake.shape[-2:])} and "
                          f"{tuple(real.shape[-2:])}")


def l1(fake, real):
    """Per-image mean |fake - real| of uint8 NCHW batches, on values scaled to [0, 1]."""
    check_pair(fake, real)
    return (fake.double() - real.double()).abs().mean(dim=(1, 2, 3)) / 255.0


def psnr(fake, real):
    """Per-image PSNR in dB of uint8 NCHW batches (MAX = 255), capped at PSNR_CAP for identical images."""
    check_pair(fake, real)
    mse = (fake.double() - real.double()).square().mean(dim=(1, 2, 3))
    return (10 * torch.log10(255.0 ** 2 / mse)).clamp(max=PSNR_CAP)


def gaussian_window(device):
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x.square() / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim_map(fake, real, rows, cols):
    """SSIM at each valid-region pixel of uint8 NCHW batches; ``rows``, ``cols``: the window's 1-D halves."""
    x, y = fake.double(), real.double()
    channels = x.shape[1]

    def local_mean(t):
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.square()
    var_y = local_mean(y * y) - mu_y.square()
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    return numerator / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def ssim(fake, real):
    """Per-image SSIM of uint8 NCHW batches: local statistics under a Gaussian window, valid region only.

    The window is separable, so each local mean is two 1-D convolutions per channel (float64). The map is summed
    tile by tile (SSIM_TILE, SSIM_TILE_ELEMENTS): a tile's input reaches SSIM_WINDOW - 1 pixels past its outputs,
    so every window is whole and the tiles' sums are the untiled map's, in memory bounded for any image size."""
    check_pair(fake, real)
    count, channels, height, width = fake.shape
    if min(height, width) < SSIM_WINDOW:
        raise MetricError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    g = gaussian_window(fake.device)
    rows, cols = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out_height, out_width = height - SSIM_WINDOW + 1, width - SSIM_WINDOW + 1
    sums = torch.zeros(count, dtype=torch.float64, device=fake.device)
    for top in range(0, out_height, SSIM_TILE):
        bottom = min(top + SSIM_TILE, out_height) + SSIM_WINDOW - 1
        for left in range(0, out_width, SSIM_TILE):
            right = min(left + SSIM_TILE, out_width) + SSIM_WINDOW - 1
            step = max(1, SSIM_TILE_ELEMENTS // (channels * (bottom - top) * (right - left)))
            for first in range(0, count, step):
                tile = (slice(first, first + step), slice(None), slice(top, bottom), slice(left, right))
                sums[first:first + step] += ssim_map(fake[tile], real[tile], rows, cols).sum(dim=(1, 2, 3))
    return sums / (channels * out_height * out_width)


PAIR_METRICS = OrderedDict([("l1", l1), ("psnr", psnr), ("ssim", ssim)])
