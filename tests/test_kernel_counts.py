"""The kernels one training iteration launches, row by row (benchmarks/count_ops.py at the small size): exact
counts, not timings, so a change to what an iteration launches fails here until the table says it was meant."""

import pytest

from benchmarks import count_ops, rows

# (model, row) -> (total, aten ops, Triton launches), as in benchmarks/results/ops_small_20261208_8ae53a4.md
KERNELS = {
    ("pix2pix", "reference"): (636, 636, 0),
    ("pix2pix", "amp"): (703, 703, 0),
    ("pix2pix", "channels_last"): (705, 705, 0),
    ("pix2pix", "fused_kernels"): (645, 569, 76),
    ("pix2pix", "fused_adam"): (249, 173, 76),
    ("pix2pix", "foreach_cast"): (205, 129, 76),
    ("pix2pix", "step_cast"): (203, 127, 76),
    ("pix2pix", "fused_conv"): (221, 117, 104),
    ("cycle_gan", "reference"): (2328, 2328, 0),
    ("cycle_gan", "amp"): (2878, 2878, 0),
    ("cycle_gan", "channels_last"): (3000, 3000, 0),
    ("cycle_gan", "fused_kernels"): (1472, 974, 498),
    ("cycle_gan", "fused_adam"): (1060, 562, 498),
    ("cycle_gan", "foreach_cast"): (964, 466, 498),
    ("cycle_gan", "step_cast"): (956, 458, 498),
    ("cycle_gan", "batch_passes"): (522, 255, 267),
    ("cycle_gan", "fused_conv"): (487, 151, 336),
}
UPDATE = ("if the change is intended, update KERNELS in tests/test_kernel_counts.py and commit a new ops file: "
          "python -m benchmarks.count_ops --small --out benchmarks/results")


def test_the_table_has_every_counted_row():
    counted = [(model, row) for model in rows.MODELS for row in count_ops.counted_rows(model, small=True)]
    assert counted == list(KERNELS), f"count_ops now counts {counted}, the table has {list(KERNELS)}: {UPDATE}"


@pytest.mark.parametrize("model, row", KERNELS, ids=[f"{model}-{row}" for model, row in KERNELS])
def test_kernels_per_iteration(model, row):
    counted = count_ops.count_row(model, row, small=True)
    now, table = (counted["total"], counted["aten"], counted["triton"]), KERNELS[model, row]
    assert now == table, (f"{model} {row}: (total, aten, Triton) kernels per iteration were {table}, are now "
                          f"{now}; {UPDATE}")
