"""Helpers shared by the kernel tests: device choice and a comparison that shows where it went wrong."""

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (atol, rtol) per input dtype; atol is scaled by max(1, max |expected|) so sums over many elements compare fairly.
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}


def assert_close_verbose(actual, expected, atol, rtol, name="tensor", worst=5):
    """Assert |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected| elementwise.

    On failure, print the shape, the number of mismatches and the `worst` indices with both values.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().to(actual.device).double()  # stays on the GPU
    assert torch.isfinite(actual).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(actual))[:worst]}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    error = (actual - expected).abs()
    bad = error > atol * scale + rtol * expected.abs()
    if bad.any():
        order = torch.argsort(error.flatten(), descending=True)[:worst]
        lines = [f"{name}: {int(bad.sum())} of {bad.numel()} elements mismatch "
                 f"(atol={atol} x {scale:.3g}, rtol={rtol}); worst:"]
        for flat in order.tolist():
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(actual.shape)))
            lines.append(f"  {index}: actual {actual[index].item():.8g}  expected {expected[index].item():.8g}  "
                         f"|diff| {error[index].item():.3g}")
        message = "\n".join(lines)
        print(message)
        raise AssertionError(message)
