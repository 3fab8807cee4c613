"""fastp2p.export: the .pt2 program and the ONNX file compute what the eager generator computes in eval mode."""

import importlib.util

import pytest
import torch

from fastp2p import export as export_cli
from fastp2p.checkpoint import read_checkpoint
from fastp2p.networks import define_G
from tests.test_inference import make_checkpoint

RESNET = ["--netG", "resnet_6blocks", "--norm", "instance", "--ngf", "8", "--no_dropout", "--crop_size", "32",
          "--load_size", "32"]
UNET = ["--netG", "unet_128", "--norm", "batch", "--ngf", "8", "--crop_size", "128", "--load_size", "128"]


def export(tmp_path, flags, *extra):
    out = tmp_path / f"G.{'onnx' if '--format' in extra and 'onnx' in extra else 'pt2'}"
    argv = ["--model", "test", "--name", "net", "--checkpoints_dir", str(tmp_path / "checkpoints"), *flags,
            "--out", str(out), *extra]
    assert export_cli.main(argv) == 0
    return out


def eager_generator(tmp_path, netG, norm, dropout):
    net = define_G(3, 3, 8, netG, norm, dropout)
    net.load_state_dict(read_checkpoint(str(tmp_path / "checkpoints" / "net" / "latest_net_G.pth")))
    return net.eval()


@pytest.fixture
def resnet(tmp_path):
    make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance")
    return eager_generator(tmp_path, "resnet_6blocks", "instance", False)


@pytest.fixture
def unet(tmp_path):
    """With BatchNorm (running statistics drawn away from 0 and 1) and dropout, which eval mode turns off."""
    make_checkpoint(tmp_path / "checkpoints", "net", "unet_128", "batch", crop_size=128, no_dropout=False)
    return eager_generator(tmp_path, "unet_128", "batch", True)


@pytest.mark.slow
def test_pt2_of_a_resnet_equals_the_eager_generator_at_two_batch_sizes_and_other_sizes(tmp_path, resnet):
    program = torch.export.load(str(export(tmp_path, RESNET))).module()
    with torch.no_grad():
        for shape in ((1, 3, 32, 32), (3, 3, 32, 32), (2, 3, 48, 40)):
            x = torch.rand(shape) * 2 - 1
            assert (program(x) - resnet(x)).abs().max() <= 1e-6, shape


def test_pt2_of_a_unet_in_eval_mode_equals_the_eager_generator(tmp_path, unet):
    program = torch.export.load(str(export(tmp_path, UNET))).module()
    with torch.no_grad():
        for batch in (1, 2):
            x = torch.rand(batch, 3, 128, 128) * 2 - 1
            assert (program(x) - unet(x)).abs().max() <= 1e-6, batch
        unet.train()  # what the export leaves out: dropout and batch statistics
        assert (program(x) - unet(x)).abs().max() > 0.01
        with pytest.raises(Exception):
            program(torch.rand(1, 3, 256, 256))  # a U-Net is exported for --crop_size only


def test_bf16_export_computes_the_bf16_generator(tmp_path, resnet):
    program = torch.export.load(str(export(tmp_path, RESNET, "--dtype", "bf16"))).module()
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).bfloat16()
    with torch.no_grad():
        y = program(x)
        assert y.dtype == torch.bfloat16
        assert (y.float() - resnet.bfloat16()(x).float()).abs().max() <= 1e-2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="needs onnxruntime, onnx and onnxscript (pip install -e '.[test]')")
def test_onnx_run_by_onnxruntime_matches_the_eager_generator(tmp_path, resnet):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export(tmp_path, RESNET, "--format", "onnx")),
                                           providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for shape in ((1, 3, 32, 32), (3, 3, 36, 44)):
            x = torch.rand(shape) * 2 - 1
            (y,) = session.run(None, {"image": x.numpy()})
            assert abs(y - resnet(x).numpy()).max() <= 1e-4, shape


def run_expecting_error(capsys, argv):
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastp2p.export: error: ") and "\n" not in err, err
    return err


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    base = ["--model", "test", "--name", "net", "--checkpoints_dir", str(tmp_path / "checkpoints"),
            "--out", str(tmp_path / "G.pt2")]
    assert "checkpoint not found" in run_expecting_error(capsys, base + RESNET)
    assert "--out FILE is required" in run_expecting_error(capsys, base[:-2] + RESNET)
    make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance")
    with pytest.raises(SystemExit) as stop:  # the run's train_opt.txt refuses the other --netG as the flags parse
        export_cli.main(base + UNET)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and "--netG unet_128 conflicts" in err
    (tmp_path / "checkpoints" / "net" / "train_opt.txt").unlink()
    assert "does not match" in run_expecting_error(capsys, base + UNET)
    assert "cycle_gan holds two generators" in run_expecting_error(capsys, base[:1] + ["cycle_gan"] + base[2:] + RESNET)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else
                        real_find_spec(name, *a))
    assert "pip install onnx onnxscript" in run_expecting_error(capsys, base + RESNET + ["--format", "onnx"])
    assert not (tmp_path / "G.pt2").exists()
