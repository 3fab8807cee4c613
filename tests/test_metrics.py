"""fastp2p.metrics: L1/PSNR/SSIM against independent numpy computations, FID/KID through torchmetrics with a small
feature network (the Inception weights are a download), and ``python -m fastp2p.metrics`` on tiny folders."""

import importlib
import json
import math
import os
import re
import subprocess
import sys
import tomllib
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastp2p import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_images(seed, count=3, size=(16, 13)):
    return np.random.RandomState(seed).randint(0, 256, (count, 3, *size)).astype(np.uint8)


def noisy_copy(images, seed, amplitude=40):
    noise = np.random.RandomState(seed).randint(-amplitude, amplitude + 1, images.shape)
    return np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8)


def direct_ssim(x, y):
    """SSIM of two HxW float arrays, window by window: the Gaussian-weighted statistics of each 11x11 patch."""
    half = metrics.SSIM_WINDOW // 2
    g = np.exp(-np.arange(-half, half + 1) ** 2 / (2 * metrics.SSIM_SIGMA ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 2 * half):
        for j in range(x.shape[1] - 2 * half):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(values)


def test_pair_metrics_match_numpy_formulas():
    real = random_images(0)
    fake = noisy_copy(real, 1)
    fake_t, real_t = torch.from_numpy(fake), torch.from_numpy(real)
    diff = fake.astype(np.float64) - real.astype(np.float64)
    expected_psnr = [10 * math.log10(255 ** 2 / np.mean(d ** 2)) for d in diff]
    np.testing.assert_allclose(metrics.psnr(fake_t, real_t).numpy(), expected_psnr, rtol=1e-12)
    np.testing.assert_allclose(metrics.l1(fake_t, real_t).numpy(), np.abs(diff).mean(axis=(1, 2, 3)) / 255,
                               rtol=1e-12)
    expected_ssim = [np.mean([direct_ssim(f[c].astype(float), r[c].astype(float)) for c in range(3)])
                     for f, r in zip(fake, real)]
    np.testing.assert_allclose(metrics.ssim(fake_t, real_t).numpy(), expected_ssim, rtol=1e-9)
    assert 0 < min(expected_ssim) < 0.99  # noisy, not identical: the comparison is not between constants


def test_identical_images_score_perfectly_and_sizes_are_checked():
    images = torch.from_numpy(random_images(2))
    assert metrics.ssim(images, images).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    assert metrics.psnr(images, images).tolist() == [metrics.PSNR_CAP] * 3
    assert metrics.l1(images, images).tolist() == [0.0] * 3
    with pytest.raises(metrics.MetricError, match="differ in size"):
        metrics.psnr(images, images[..., :12])
    with pytest.raises(metrics.MetricError, match="at least 11x11"):
        metrics.ssim(images[..., :10, :], images[..., :10, :])


def test_to_uint8_is_the_saved_bytes():
    values = torch.tensor([-2.0, -1.0, 0.0, 1.0, float("nan")]).view(1, 1, 1, 5)
    assert metrics.to_uint8(values)[0, :, 0].tolist() == [[0, 0, 127, 255, 0]] * 3


class TinyFeatures(nn.Module):
    """A fixed random conv and a global average: 4 features of a uint8 image, in place of Inception."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()

    def forward(self, images):
        return torch.tanh(self.conv(images.float() / 255)).mean(dim=(2, 3)).double()


def numpy_fid(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace


def numpy_kid(a, b):
    """Unbiased MMD^2 with the cubic polynomial kernel, over the whole sets (one subset of every image)."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n = len(a)
    return ((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
            - 2 * kab.mean())


def test_fid_and_kid_through_torchmetrics_with_a_small_feature_network():
    pytest.importorskip("torchmetrics")
    net = TinyFeatures()
    real = torch.from_numpy(random_images(3, count=8))
    fake = torch.from_numpy(noisy_copy(random_images(3, count=8)[::-1].copy(), 4, amplitude=90))
    distances = metrics.FeatureDistances(torch.device("cpu"), feature=net)
    distances.update(real, real=True)
    distances.update(fake, real=False)
    values = distances.compute()
    with torch.no_grad():
        fa, fb = net(real).numpy(), net(fake).numpy()
    assert values["fid"] == pytest.approx(numpy_fid(fa, fb), rel=1e-4, abs=1e-7)
    assert values["kid"] == pytest.approx(numpy_kid(fa, fb), rel=1e-4, abs=1e-7)
    assert values["fid"] > 1e-4
    distances.reset_fake()  # the real set is kept: scoring the real images as generated gives 0
    assert distances.has_real()
    distances.update(real, real=False)
    assert distances.compute()["fid"] == pytest.approx(0, abs=1e-6)


def test_inception_weights_that_cannot_be_downloaded_are_one_line(tmp_path, monkeypatch, capsys):
    fid = pytest.importorskip("torchmetrics.image.fid")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fid, "FrechetInceptionDistance", offline)
    write_results(tmp_path / "res", ["a", "b"])
    assert metrics.main([str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch(
        r"fastp2p.metrics: error: the Inception network's weights could not be loaded \(<urlopen error .*\); "
        r"give a local copy with --inception_weights FILE, or score without FID/KID \(--no_fid\)\n", err), err


def write_results(folder, stems, size=(16, 16), seed=0, real_size=None):
    os.makedirs(folder, exist_ok=True)
    for i, stem in enumerate(stems):
        real = random_images(seed + i, count=1, size=real_size or size)[0].transpose(1, 2, 0)
        fake = noisy_copy(random_images(seed + i, count=1, size=size), 50 + i)[0].transpose(1, 2, 0)
        Image.fromarray(real).save(os.path.join(folder, f"{stem}_real_B.png"))
        Image.fromarray(fake).save(os.path.join(folder, f"{stem}_fake_B.png"))
        Image.fromarray(real).save(os.path.join(folder, f"{stem}_real_A.png"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastp2p.metrics", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})


def test_the_command_scores_a_results_folder(tmp_path):
    write_results(tmp_path / "res" / "images", ["a", "b", "c"])
    result = run_cli(tmp_path / "res", "--no_fid")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # nor runpy's warning of a double import
    printed = dict(line.split() for line in result.stdout.splitlines())
    assert list(printed) == ["l1", "psnr", "ssim"]
    saved = json.loads((tmp_path / "res" / "metrics.json").read_text())
    fakes, reals = ([torch.from_numpy(np.array(Image.open(tmp_path / "res" / "images" / f"{s}_{kind}_B.png")))
                     .permute(2, 0, 1)[None] for s in "abc"] for kind in ("fake", "real"))
    expected = np.mean([float(metrics.psnr(f, r)) for f, r in zip(fakes, reals)])
    assert saved["psnr"] == pytest.approx(expected, rel=1e-12)
    assert float(printed["psnr"]) == pytest.approx(expected, abs=1e-3)
    assert saved["ssim"] == pytest.approx(float(printed["ssim"]), abs=1e-3)


@pytest.mark.parametrize("case, message", [
    ("empty", "no images in"),
    ("no_pairs", "no pairs in"),
    ("sizes", "a_fake_B.png is 16x16 but a_real_B.png is 16x12"),
])
def test_the_command_says_what_is_wrong_in_one_line(tmp_path, case, message, capsys):
    folder = tmp_path / "res"
    folder.mkdir()
    if case == "no_pairs":
        write_results(folder, ["a"])
        (folder / "a_real_B.png").unlink()
    elif case == "sizes":
        write_results(folder, ["a"], real_size=(12, 16))
    assert metrics.main([str(folder), "--no_fid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastp2p.metrics: error: ") and err.count("\n") == 1 and message in err, err
    assert not (folder / "metrics.json").exists()


def test_results_folders_score_fid_and_kid_paired_or_against_a_real_folder(tmp_path):
    pytest.importorskip("torchmetrics")
    write_results(tmp_path / "res", ["a", "b", "c", "d"])
    paired = metrics.score_folder(str(tmp_path / "res"), None,
                                  metrics.FeatureDistances(torch.device("cpu"), feature=TinyFeatures()))
    assert list(paired) == ["l1", "psnr", "ssim", "fid", "kid"]
    assert paired == {**metrics.score_folder(str(tmp_path / "res")), "fid": paired["fid"], "kid": paired["kid"]}
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for i, image in enumerate(random_images(9, count=5)):
        Image.fromarray(image.transpose(1, 2, 0)).save(real_dir / f"{i}.jpg", quality=95)
    values = metrics.score_folder(str(tmp_path / "res"), str(real_dir),
                                  metrics.FeatureDistances(torch.device("cpu"), feature=TinyFeatures()))
    assert list(values) == ["fid", "kid"] and values["fid"] > 0
    with pytest.raises(metrics.MetricError, match="--no_fid turns off"):
        metrics.score_folder(str(tmp_path / "res"), str(real_dir), None)


def test_the_console_script_is_the_command():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fastp2p-metrics"]
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name) is metrics.main
