"""--batch_passes: a network's independent passes of one step run as one forward over their concatenation
(BaseModel.run_passes): the same math where every layer treats the samples of a batch independently."""

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath

PER_SAMPLE_NORMS = ("instance", "none")
"""norms under which a network treats the samples of a batch independently (so passes can be batched)"""

BATCH_PASSES = FastPath(
    "batch_passes", "run a network's independent passes of one step as one batch (CycleGAN's generator and identity "
                    "passes, D's real and fake passes); needs per-sample norms (--norm instance or none)",
    auto=lambda s: s.cuda and s.norm in PER_SAMPLE_NORMS,
    blockers=lambda s, on: [f"it would change the results of --norm {s.norm}: BatchNorm normalizes over the batch, so "
                            f"one pass over two batches differs from two passes; use --norm instance or --batch_passes "
                            f"off"] if on and s.norm not in PER_SAMPLE_NORMS else [],
    runtime=lambda choices, config: choices.update(batch_passes=True), bench_row="batch_passes",
    check=Check(REORDERED_FP32))
