"""Every fused kernel's launch grid within CUDA's limits (x < 2^31, y and z <= 65535) at the largest shapes the
README promises, planned as on an H100: whole fused networks run forward and backward on meta tensors (no memory,
no data), each launch recorded instead of run. Before grid axis x took what grows with the batch and the image, the
reflection pad put N x H_out in y and failed at launch from CycleGAN's batch 84 at 256 px with --batch_passes."""

import contextlib
import sys

import pytest
import torch

from fastp2p import networks
from fastp2p.engine.fusion import fuse_network
from fastp2p.kernels import FusedNormAct, launch
from tests.conftest import requires_cuda

H100_SMS = 132
# (name, the network, its input [N, C, size, size]): CycleGAN's batched passes run 3 x the batch through a generator,
# 2 x through a discriminator; pix2pix's D takes the 6-channel pair.
LARGEST = [
    ("cycle_gan_G_bs256_256px", lambda: networks.define_G(3, 3, 64, "resnet_9blocks", "instance"), (768, 3, 256)),
    ("cycle_gan_G_bs32_1024px", lambda: networks.define_G(3, 3, 64, "resnet_9blocks", "instance"), (96, 3, 1024)),
    ("cycle_gan_D_bs256_256px", lambda: networks.define_D(3, 64, "basic", norm="instance"), (512, 3, 256)),
    ("pix2pix_G_bs512_256px", lambda: networks.define_G(3, 3, 64, "unet_256", "batch", use_dropout=True),
     (512, 3, 256)),
    ("pix2pix_D_bs512_256px", lambda: networks.define_D(6, 64, "basic", norm="batch"), (512, 6, 256)),
    ("resnet_batch_G_bs128_512px", lambda: networks.define_G(3, 3, 64, "resnet_9blocks", "batch"), (128, 3, 512)),
]


class RecordedLaunches:
    """Stands in for every Triton kernel of fastp2p.kernels: ``kernel[grid](...)`` records the grid, runs nothing."""

    def __init__(self, monkeypatch):
        self.grids = []
        gpu_plans = {launch.sized_for_gpu: lambda device: True,
                     launch.target_programs: lambda device, waves=4: waves * H100_SMS}
        for module in [m for name, m in sys.modules.items() if name.startswith("fastp2p.kernels")]:
            for attr, value in list(vars(module).items()):
                if type(value).__name__ in ("JITFunction", "InterpretedFunction"):
                    monkeypatch.setattr(module, attr, self.kernel(attr))
                elif callable(value) and value in gpu_plans:
                    monkeypatch.setattr(module, attr, gpu_plans[value])

    def kernel(self, name):
        recorder = self

        class Kernel:
            def __getitem__(self, grid):
                recorder.grids.append((name, tuple(grid)))
                return lambda *args, **kwargs: None
        return Kernel()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("fused_conv", [False, True], ids=["fused_kernels", "fused_conv"])
@pytest.mark.parametrize("name, build, shape", LARGEST, ids=[case[0] for case in LARGEST])
def test_every_launch_grid_fits_cudas_limits_at_the_largest_promised_shapes(monkeypatch, name, build, shape,
                                                                            channels_last, fused_conv):
    net = build()
    fuse_network(net, fused_kernels=True, fused_conv=fused_conv)
    net = net.to("meta")
    images, channels, size = shape
    x = torch.empty(images, channels, size, size, device="meta", requires_grad=True)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    recorded = RecordedLaunches(monkeypatch)
    monkeypatch.setattr(launch, "_TICKETS", {})  # the meta device's counters are not kept for later tests
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: False)  # autocast knows no meta device
    monkeypatch.setattr(torch, "autocast", lambda device_type, enabled: contextlib.nullcontext())
    net.train()
    net(x).sum().backward()
    kernels = {kernel for kernel, _ in recorded.grids}  # forward and backward went through the fused kernels
    assert any("backward" in kernel or "grad" in kernel for kernel in kernels) and len(recorded.grids) >= 6
    too_large = [(kernel, grid) for kernel, grid in recorded.grids
                 if any(not 0 <= n <= limit for n, limit in zip(grid, launch.GRID_LIMITS))]
    assert not too_large


def test_a_grid_over_the_limits_is_a_clear_error():
    assert launch.grid(2**31 - 1, 65535, 65535) == (2**31 - 1, 65535, 65535)
    for dims in [(2**31, 1, 1), (1, 65536), (1, 1, 65536)]:
        with pytest.raises(ValueError, match=r"launch grid .* is outside CUDA's limits"):
            launch.grid(*dims)


@requires_cuda
def test_a_batch_norm_over_65535_row_blocks_runs_like_the_reference_on_cuda():
    """BatchNorm + ReLU over 128 channels-last images of 64 x 128 x 128: 65536 row blocks of 32, one more than grid
    axis y or z may hold."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    reference = torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.ReLU()).to(device)
    fused = FusedNormAct.from_norm(reference[0], activation="relu")
    x = torch.randn(128, 64, 128, 128, device=device).to(memory_format=torch.channels_last)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_fused = reference(x_ref), fused(x_fused)
    torch.testing.assert_close(y_fused, y_ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fused.backward(grad)
    torch.testing.assert_close(x_fused.grad, x_ref.grad, rtol=1e-3, atol=1e-5)
