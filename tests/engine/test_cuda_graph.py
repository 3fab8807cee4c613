"""CUDA graphs of the training iteration: graph replays against eager steps, and CycleGAN's device-side image pool,
whose bank must exist before the capture."""

import contextlib

import pytest
import torch

from fastp2p.engine.cuda_graph import DeviceImagePool
from fastp2p.image_pool import ImagePool
from tests.conftest import requires_cuda
from tests.engine.helpers import NO_POOL, OFF, STEPS, assert_same_training, make_opt, prepared, train_steps


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_cuda_graph_trains_like_eager(model_name):
    """fp32 graph replay vs eager: the same kernels, but cuDNN may pick other algorithms during capture;
    GAN losses amplify such rounding differences over the 10 steps (seen: 1.5e-3 relative at step 8)."""
    run = train_steps(model_name, OFF + NO_POOL + ["--cuda_graph", "on", "--fused_adam", "on"], STEPS + 6)
    eager = train_steps(model_name, OFF + NO_POOL + ["--fused_adam", "on"], STEPS + 6)
    assert_same_training(run, eager, 5e-3, 1e-4, 1e-4)


def test_device_image_pool_fills_then_swaps_on_device():
    torch.manual_seed(0)
    pool = DeviceImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    assert torch.equal(pool.query(first), first) and pool.is_full()
    swapped = 0
    for step in range(200):
        image = torch.full((1, 3, 2, 2), 100.0 + step)
        out = pool.query(image)
        bank_values = set(pool.bank[:, 0, 0, 0].tolist())
        if out[0, 0, 0, 0] != image[0, 0, 0, 0]:
            swapped += 1
            assert 100.0 + step in bank_values  # the new image took the returned one's slot
        assert len(pool.bank) == 4
    assert 70 < swapped < 130  # p = 0.5
    restored = ImagePool(4)
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(torch.cat(restored.images), pool.bank)


class FakeCudaGraphs:
    """torch.cuda's stream and graph calls that GraphedTrainStep makes, on the CPU: the capture runs the step once
    with ``capturing`` set, and a replay runs it again. What the order of pool filling, bank building and capture
    does to a real graph is then visible: each pool's bank as the capture found it and left it."""

    def __init__(self, monkeypatch):
        self.capturing, self.banks_at_capture, self.graphed = False, None, None
        fakes = self

        class Graph:
            def replay(self):
                fakes.graphed.step(fakes.graphed.static)

        @contextlib.contextmanager
        def graph(_graph, **_):
            pools = self.graphed.pools
            before = [pool.bank for pool in pools]
            self.capturing = True
            yield
            self.capturing = False
            self.banks_at_capture = list(zip(before, [pool.bank for pool in pools]))

        class Stream:
            device = torch.device("cpu")

            def wait_stream(self, _):
                pass

        monkeypatch.setattr(torch.cuda, "Stream", lambda *_: Stream())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "stream", lambda _: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *_: Stream())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: None)
        adam = torch.optim.Adam  # capturable Adam is for CUDA devices only
        monkeypatch.setattr(torch.optim, "Adam", lambda params, capturable, **kw: adam(params, foreach=False, **kw))


@pytest.mark.parametrize("pool_size, batch_size", [(5, 1), (6, 2), (2, 1)])  # full after, on, before the warm-up
def test_a_cuda_graph_is_captured_after_the_image_pools_bank_is_built(monkeypatch, pool_size, batch_size):
    """CycleGAN under --cuda_graph with a pool that fills during warm-up: the step captured must find each pool's bank
    built (a bank built inside the capture is rebuilt at each replay from freed memory, and no swap persists) and
    leave it in place, and the replays keep swapping into that same bank."""
    fakes = FakeCudaGraphs(monkeypatch)
    opt = make_opt("cycle_gan", *OFF, "--pool_size", str(pool_size), "--batch_size", str(batch_size))
    torch.manual_seed(0)
    model, graphed = prepared(opt, cuda_graph=True)
    fakes.graphed = graphed
    pools = [getattr(model, name) for name in model.pool_names]
    assert all(isinstance(pool, DeviceImagePool) for pool in pools)
    gen = torch.Generator().manual_seed(1)
    for step in range(11):
        batch = {"A": torch.rand(batch_size, 3, 32, 32, generator=gen),
                 "B": torch.rand(batch_size, 3, 32, 32, generator=gen), "A_paths": [""], "B_paths": [""]}
        graphed(batch)
    assert graphed.graph is not None
    for before, after in fakes.banks_at_capture:
        assert before is not None, "the capture found a pool without its bank"
        assert after is before
    banks = [pool.bank for pool in pools]
    assert all(bank.shape[0] == pool_size for bank in banks)
    graphed(batch)  # a replay swaps into the same bank
    assert [pool.bank for pool in pools] == banks


def test_a_device_pool_builds_its_bank_as_it_fills_and_as_a_full_pool_is_loaded():
    pool = DeviceImagePool(3)
    pool.query(torch.zeros(2, 3, 2, 2))
    assert pool.bank is None and not pool.is_full()
    pool.query(torch.ones(2, 3, 2, 2))  # fills mid-batch: the last image goes through the reference's draw
    assert pool.is_full() and pool.bank.shape == (3, 3, 2, 2) and pool.images == []
    loaded = DeviceImagePool(3)
    loaded.load_state_dict(pool.state_dict())
    assert loaded.is_full() and torch.equal(loaded.bank, pool.bank)


@requires_cuda
def test_a_graph_replayed_pool_keeps_its_swaps():
    """On CUDA: a full pool's query captured in a graph and replayed with new images. Each replay must return, per
    image, the new image or one the bank held before it, and leave the bank holding exactly the old bank with those
    swaps applied (no draws compared: any seed gives the same invariants; the bug rebuilt the bank each replay)."""
    device = torch.device("cuda")
    pool = DeviceImagePool(4)
    pool.query(torch.arange(4.0, device=device).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous())
    static = torch.zeros(2, 3, 2, 2, device=device)
    pool.query(static)  # warm-up, eager
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pool.query(static)
    swaps = 0
    for replay in range(50):
        before = pool.bank[:, 0, 0, 0].tolist()
        fresh = [100.0 + 2 * replay, 101.0 + 2 * replay]
        static.copy_(torch.tensor(fresh, device=device).view(2, 1, 1, 1).expand(2, 3, 2, 2))
        graph.replay()
        torch.cuda.synchronize()
        returned, after = out[:, 0, 0, 0].tolist(), pool.bank[:, 0, 0, 0].tolist()
        expected = sorted(before + fresh)
        for value in returned:
            expected.remove(value)
        assert sorted(after) == expected, (replay, before, fresh, returned, after)
        swaps += sum(value not in fresh for value in returned)
    assert swaps > 10


