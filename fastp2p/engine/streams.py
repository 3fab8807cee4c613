"""Two independent parts of a training step on two CUDA streams: CycleGAN's D_A and D_B updates.

At batch 1 a discriminator's forward and backward leave most of the GPU idle, and D_A's update shares nothing with
D_B's (other networks, other inputs, other gradients), so each runs whole, forward and backward, on a stream of its
own: autograd runs a backward op on the stream of its forward op, so no tensor crosses between the two streams
while they run. The side stream starts after the work queued before it (its inputs) and the current stream waits
for it before anything that follows (D's optimizer step, the next iteration), which also keeps every tensor the
side stream used or allocated alive until it is done with it, with no record_stream. Both are captured in a CUDA
graph as a fork and a join.

The generator step's A and B halves are not put on two streams. With --batch_passes (the GPU default for per-sample
norms) they already run together, each generator's passes as one batch, which fills the GPU better than two streams
of batch 1 would. Without it the halves are not independent: each generator runs in both (G_A makes fake_B in one
and rec_B in the other), so both halves write both generators' gradients, and a BatchNorm generator's running
statistics would be updated from two streams at once, in an order that changes them.
"""

import torch

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath


class TwoStreams:
    """``run(first, second)``, BaseModel.run_independent's contract: first() on the current stream and second() on
    a side stream, queued in that order (so host-side random draws, such as CycleGAN's image pools', come in the
    plain step's order)."""

    def __init__(self, device):
        self.side = torch.cuda.Stream(device)

    def run(self, first, second):
        current = torch.cuda.current_stream(self.side.device)
        self.side.wait_stream(current)  # before first() is queued: the side waits for the inputs only
        first()
        with torch.cuda.stream(self.side):
            second()
        current.wait_stream(self.side)


TWO_STREAMS = FastPath(
    "two_streams", "CycleGAN: update D_A and D_B, each forward and backward, on two CUDA streams at once (they share "
                   "nothing; at small batches one leaves most of the GPU idle); not with DDP or --overlap_optimizer; "
                   "auto leaves it off until a GPU measurement shows it pays",
    auto=lambda s: False,
    blockers=lambda s, on: [reason for reason, blocked in (
        ("it needs a GPU", not s.cuda),
        ("only CycleGAN has two independent updates (D_A and D_B)", s.model != "cycle_gan"),
        ("DDP's reducer would all-reduce from the side stream, which is not tested", s.ddp),
        ("--overlap_optimizer steps on a side stream of its own", s.value("overlap_optimizer")),
    ) if blocked] if on else [],
    runtime=lambda choices, config: choices.update(run_independent=TwoStreams(choices["device"]).run),
    bench_row="two_streams", check=Check(REORDERED_FP32, cpu=False, compares="D_A's and D_B's updates on two "
                                                                             "streams against one stream"))
