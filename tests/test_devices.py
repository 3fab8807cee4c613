"""--gpu_ids picks the GPU: the first id for one process, gpu_ids[LOCAL_RANK] under torchrun, and a clear error
for an id the machine lacks. Runs on the CPU against a faked set of GPUs."""

import pytest
import torch

from fastp2p import distributed
from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.errors import OptionError
from fastp2p.options import parse_options


@pytest.fixture
def fake_gpus(monkeypatch):
    """Returns ``install(count)``, which makes torch see ``count`` GPUs and returns the list of set_device calls."""
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)

    def install(count):
        chosen = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1] if chosen else 0)
        return chosen

    return install


def torchrun_env(monkeypatch, local_rank, local_world_size):
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))


def device_for(*args):
    return distributed.init_device(parse_options(list(args), is_train=True).gpu_ids)


def test_one_process_trains_on_the_first_listed_gpu(fake_gpus, capsys):
    chosen = fake_gpus(8)
    assert device_for("--gpu_ids", "5") == torch.device("cuda", 5)
    assert chosen == [5]
    assert "warning" not in capsys.readouterr().out


def test_one_process_given_several_gpus_uses_the_first_and_says_the_rest_stay_idle(fake_gpus, capsys):
    chosen = fake_gpus(8)
    assert device_for("--gpu_ids", "6,7") == torch.device("cuda", 6)
    assert chosen == [6]
    out = capsys.readouterr().out
    assert "GPUs 7 stay idle" in out and "--nproc_per_node=2" in out


@pytest.mark.parametrize("local_rank, expected", [(0, 6), (1, 7)])
def test_under_torchrun_each_local_rank_takes_its_own_listed_gpu(fake_gpus, monkeypatch, local_rank, expected):
    chosen = fake_gpus(8)
    torchrun_env(monkeypatch, local_rank, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    backends = []
    monkeypatch.setattr(distributed.dist, "rendezvous", lambda url: iter([("store", local_rank, 2)]))
    monkeypatch.setattr(distributed.dist, "PrefixStore", lambda prefix, store: store)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **group: backends.append((backend, group)))
    assert device_for("--gpu_ids", "6,7") == torch.device("cuda", expected)
    assert chosen == [expected]
    assert backends == [("nccl", {"store": "store", "rank": local_rank, "world_size": 2})]


def test_under_torchrun_fewer_ids_than_local_processes_is_an_error(fake_gpus, monkeypatch):
    chosen = fake_gpus(8)
    torchrun_env(monkeypatch, 0, 4)
    with pytest.raises(OptionError, match=r"^--gpu_ids 2,3 lists 2 GPU\(s\) for the 4 processes on this machine"):
        device_for("--gpu_ids", "2,3")
    assert chosen == []


@pytest.mark.parametrize("ids", ["5", "0,2"])
def test_an_id_the_machine_lacks_is_an_error(fake_gpus, ids):
    chosen = fake_gpus(2)
    with pytest.raises(OptionError, match=rf"^--gpu_ids {ids}: no GPU {ids[-1]} on this machine, which has 2 "
                                          rf"visible GPU\(s\), numbered from 0$"):
        device_for("--gpu_ids", ids)
    assert chosen == []


@pytest.mark.parametrize("cli, prog", [(train_cli, "fastp2p.train"), (test_cli, "fastp2p.test")])
def test_an_id_the_machine_lacks_stops_both_scripts_in_one_line(fake_gpus, tmp_path, cli, prog, capsys):
    fake_gpus(2)
    model = ["--model", "test"] if cli is test_cli else []
    assert cli.main([*model, "--gpu_ids", "5", "--checkpoints_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{prog}: error: --gpu_ids 5: no GPU 5 on this machine, which has 2 visible GPU(s), numbered from 0"]


def test_without_cuda_a_gpu_request_warns_and_runs_on_the_cpu(fake_gpus, capsys):
    chosen = fake_gpus(0)
    assert device_for("--gpu_ids", "5") == torch.device("cpu")
    assert chosen == []
    assert "warning: --gpu_ids 5 asks for a GPU but CUDA is not available" in capsys.readouterr().out


def test_minus_one_means_the_cpu_even_with_gpus(fake_gpus):
    chosen = fake_gpus(8)
    assert device_for("--gpu_ids", "-1") == torch.device("cpu")
    assert chosen == []
