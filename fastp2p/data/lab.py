"""sRGB <-> CIE Lab (D65 white, 2-degree observer), in float64 numpy with scikit-image's constants and formulas, the
conversion the reference's colorization uses (skimage.color.rgb2lab / lab2rgb), without depending on scikit-image.

``rgb_to_lab`` takes HxWx3 uint8 (or floats in [0, 1]) and gives L in [0, 100] and a, b in about [-110, 110];
``lab_to_rgb`` gives floats in [0, 1], clipped as scikit-image clips (Z below 0 first, then RGB to [0, 1]).
tests/test_colorization.py checks both against scikit-image.
"""

import numpy as np

XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.array([[3.2404813432005266, -1.5371515162713183, -0.4985363261688878],
                         [-0.9692549499965682, 1.8759900014898907, 0.04155592655829284],
                         [0.055646639135177166, -0.20404133836651123, 1.0573110696453443]])
"""XYZ_FROM_RGB's inverse as scipy.linalg.inv rounds it (numpy's inverse differs in the last bits), which scikit-image
uses"""
D65_WHITE = np.array([0.95047, 1.0, 1.08883])
EPSILON = 0.008856  # (6/29)**3, rounded as scikit-image rounds it: where the cube root meets the linear segment
SLOPE = 7.787


def rgb_to_lab(rgb):
    """HxWx3 sRGB (uint8, or floats in [0, 1]) -> HxWx3 float64 Lab."""
    linear = np.asarray(rgb, dtype=np.float64)
    if np.asarray(rgb).dtype == np.uint8:
        linear = linear * (1 / 255.0)  # scikit-image's img_as_float
    high = linear > 0.04045
    linear = np.where(high, np.power((linear + 0.055) / 1.055, 2.4, where=high, out=np.zeros_like(linear)),
                      linear / 12.92)
    xyz = (linear @ XYZ_FROM_RGB.T) / D65_WHITE
    high = xyz > EPSILON
    f = np.where(high, np.cbrt(xyz), SLOPE * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """HxWx3 Lab -> HxWx3 float64 sRGB in [0, 1]."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = np.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = np.stack([fx, fy, fz], axis=-1)
    high = f > 0.2068966
    xyz = np.where(high, np.power(f, 3.0), (f - 16.0 / 116.0) / SLOPE) * D65_WHITE
    linear = xyz @ RGB_FROM_XYZ.T
    high = linear > 0.0031308
    rgb = np.where(high, 1.055 * np.power(linear, 1 / 2.4, where=high, out=np.zeros_like(linear)) - 0.055,
                   linear * 12.92)
    return np.clip(rgb, 0.0, 1.0)
