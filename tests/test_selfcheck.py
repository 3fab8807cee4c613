"""The start-up self-check and fastp2p.doctor, on the CPU: a fused kernel made to return wrong values, to raise, to
crash its process or to hang (injected by a sitecustomize these tests put on the check process's path, not by any
switch of fastp2p's) is turned off with one line when 'auto' chose it, and the run goes on as a run with the path off;
asked for with 'on' it stops the run in one line before anything is written; verdicts are cached and a version change
invalidates them; the doctor's JSON holds what it says."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from fastp2p import doctor, environment, selfcheck
from fastp2p import train as train_cli
from fastp2p.engine.registry import BY_NAME
from tests.test_train_cli import aligned_root  # noqa: F401 (a fixture used by name)
from tests.test_train_cli import pix2pix_flags

BREAK = '''import os
mode = os.environ.get("FASTP2P_TEST_BREAK")
if mode:
    import fastp2p.kernels.norm_act_module as module

    original = module.norm_act_forward

    def broken(*args, **kwargs):
        if mode == "raise":
            raise RuntimeError("injected: the kernel failed")
        if mode == "crash":
            os.kill(os.getpid(), 11)
        if mode == "hang":  # with a child of its own, which the check's time limit must end too
            import subprocess
            import sys
            import time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            with open(os.environ["FASTP2P_TEST_CHILD"], "w") as f:
                f.write(str(child.pid))
            time.sleep(3600)
        y, y_padded, mean, rstd = original(*args, **kwargs)
        return (None if y is None else y * 1.5), (None if y_padded is None else y_padded * 1.5), mean, rstd

    module.norm_act_forward = broken
'''


@pytest.fixture
def check_env(tmp_path, monkeypatch):
    """A cache of its own, and the injection on the check processes' path; returns ``breaks(mode)``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAK)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), root, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FASTP2P_TEST_CHILD", str(tmp_path / "child.pid"))
    return lambda mode: monkeypatch.setenv("FASTP2P_TEST_BREAK", mode)


@pytest.fixture
def auto_fuses(monkeypatch):
    """'auto' turns the fused kernels on here, as on a GPU."""
    monkeypatch.setitem(BY_NAME, "fused_kernels", dataclasses.replace(BY_NAME["fused_kernels"], auto=lambda s: True))


def flags(tmp_path, root, name, *more):
    return pix2pix_flags(tmp_path, root, name=name, epochs=(1, 0)) + ["--norm", "instance", "--selfcheck_timeout",
                                                                     "60", *more]


def hashes(folder):
    return {entry: hashlib.sha256((folder / entry).read_bytes()).hexdigest() for entry in sorted(os.listdir(folder))
            if "_net_" in entry}


@pytest.mark.slow
@pytest.mark.parametrize("mode, why", [("wrong", "loss G_GAN of iteration 1"), ("raise", "injected: the kernel failed"),
                                       ("crash", "its check process died (signal 11"),
                                       ("hang", "did not finish within --selfcheck_timeout 20 s")])
def test_a_broken_path_auto_chose_is_turned_off_and_the_run_trains_without_it(tmp_path, aligned_root, check_env,
                                                                               auto_fuses, mode, why, capsys):
    check_env(mode)
    timeout = ["--selfcheck_timeout", "20"] if mode == "hang" else []
    assert train_cli.main(flags(tmp_path, aligned_root, "checked", "--selfcheck", "on", *timeout)) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("self-check: --fused_kernels turned off"))
    assert why in line and "python -m fastp2p.doctor" in line
    assert "engine: fp32, reference path" in out
    assert train_cli.main(flags(tmp_path, aligned_root, "off", "--fused_kernels", "off", "--selfcheck", "off")) == 0
    checkpoints = tmp_path / "checkpoints"
    assert hashes(checkpoints / "checked") == hashes(checkpoints / "off")
    if mode == "hang":
        assert not alive(int((tmp_path / "child.pid").read_text()))


def alive(pid, seconds=5.0):
    """Whether process ``pid`` is still running (not gone, not a zombie) after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.1)
    os.kill(pid, 9)  # leave nothing behind, whatever the verdict
    return True


@pytest.mark.slow
def test_a_check_process_ends_with_its_killed_trainer(tmp_path, aligned_root, check_env):
    """The check process runs in a session of its own, out of reach of a kill of the trainer's group: a trainer
    killed outright (SIGKILL, the out-of-memory killer) must take the check process and what it started with it."""
    check_env("hang")
    trainer = subprocess.Popen([sys.executable, "-m", "fastp2p.train",
                                *flags(tmp_path, aligned_root, "killed", "--fused_kernels", "on", "--selfcheck", "on")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child_file = tmp_path / "child.pid"
    try:
        deadline = time.monotonic() + 300
        while not (child_file.exists() and child_file.read_text()) and time.monotonic() < deadline:
            assert trainer.poll() is None, "the trainer ended before its check hung"
            time.sleep(0.2)
        child = int(child_file.read_text())
        with open(f"/proc/{child}/stat") as f:
            check = int(f.read().split(") ", 1)[1].split()[1])  # the hung check process, the child's parent
    finally:
        trainer.kill()
        trainer.wait()
    left = [pid for pid in (check, child) if alive(pid)]  # each looked at (and killed, if left)
    assert not left


@pytest.mark.slow
def test_a_broken_path_asked_for_stops_the_run_in_one_line_before_anything_is_written(tmp_path, aligned_root,
                                                                                     check_env, capsys):
    check_env("wrong")
    assert train_cli.main(flags(tmp_path, aligned_root, "asked", "--fused_kernels", "on", "--selfcheck", "on")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fastp2p.train: error: --fused_kernels on failed its self-check")
    assert not (tmp_path / "checkpoints" / "asked").exists()


@pytest.mark.slow
def test_a_cached_verdict_is_reused_until_a_version_changes(tmp_path, aligned_root, check_env, monkeypatch, capsys):
    run = flags(tmp_path, aligned_root, "cached", "--fused_adam", "on", "--selfcheck", "on")
    assert train_cli.main(run) == 0
    assert "self-check: fused_adam pass on this device\n" in capsys.readouterr().out
    checks = []
    real = selfcheck.run_checks
    monkeypatch.setattr(selfcheck, "run_checks", lambda *args: checks.append(1) or real(*args))
    assert train_cli.main(run + ["--n_epochs", "2", "--continue_train"]) == 0
    assert checks == [] and "self-check: fused_adam pass on this device (cached verdict)" in capsys.readouterr().out
    monkeypatch.setattr(environment, "__version__", "99.0")
    assert train_cli.main(run + ["--n_epochs", "3", "--continue_train"]) == 0
    assert checks == [1]


def test_no_self_check_runs_on_the_cpu_by_default(tmp_path, aligned_root, monkeypatch):
    monkeypatch.setattr(selfcheck, "run_checks", lambda *args: pytest.fail("a self-check ran"))
    assert train_cli.main(flags(tmp_path, aligned_root, "plain", "--fused_adam", "on")) == 0


def test_the_doctors_json_holds_the_environment_the_run_and_each_paths_result(tmp_path, capsys):
    report = tmp_path / "doctor.json"
    argv = ["--model", "pix2pix", "--gpu_ids", "-1", "--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4",
            "--crop_size", "32", "--load_size", "32", "--checkpoints_dir", str(tmp_path), "--paths",
            "fused_adam,cuda_graph,batch_passes", "--repeats", "1", "--json", str(report)]
    assert doctor.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert set(data) == {"environment", "run", "engine", "paths", "passed", "verdict"}
    env = data["environment"]
    assert {"fastp2p", "commit", "python", "torch", "cuda", "cudnn", "triton", "dali", "torchvision", "device",
            "process_group"} <= set(env) and env["device"]["type"] == "cpu" and env["process_group"] is None
    assert data["run"].startswith("pix2pix: resnet_6blocks (ngf 4) + basic D (ndf 4), norm batch, 32x32, batch 1")
    rows = {row["name"]: row for row in data["paths"]}
    assert list(rows) == ["reference", "fused_adam", "cuda_graph", "batch_passes"]
    assert rows["reference"]["ms_per_iteration"] > 0
    adam = rows["fused_adam"]
    assert adam["status"] == "ok" and adam["tolerance"]["precision"] == "fp32" and adam["ms_per_iteration"] > 0
    assert set(adam["worst"]) == {"loss", "gradient_rel_l2", "gradient_cosine", "weight"}
    assert adam["worst"]["weight"] <= adam["tolerance"]["weight_atol"]
    assert (rows["cuda_graph"]["status"], rows["cuda_graph"]["why"]) == ("skipped", "it needs a GPU")
    assert rows["batch_passes"]["status"] == "skipped" and "BatchNorm" in rows["batch_passes"]["why"]
    assert data["passed"] and data["verdict"].startswith("verdict: every checked path passed (1 ok, 0 failed, "
                                                         "2 skipped)")
    assert data["verdict"] in printed and "fused_adam" in printed


def test_the_doctor_exits_1_when_a_path_fails(tmp_path, monkeypatch):
    from fastp2p import parity

    monkeypatch.setattr(parity, "check_training", lambda *args: (parity.Verdict(False, "made to fail"), None, None))
    argv = ["--model", "pix2pix", "--gpu_ids", "-1", "--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4",
            "--crop_size", "32", "--load_size", "32", "--checkpoints_dir", str(tmp_path), "--paths", "fused_adam",
            "--no_timing"]
    assert doctor.main(argv) == 1


@pytest.mark.slow
def test_the_test_script_checks_its_generators_forward(tmp_path, aligned_root, check_env, capsys):
    from fastp2p import test as test_cli

    assert train_cli.main(flags(tmp_path, aligned_root, "infer")) == 0
    capsys.readouterr()
    argv = ["--model", "pix2pix", "--dataroot", str(aligned_root), "--name", "infer", "--checkpoints_dir",
            str(tmp_path / "checkpoints"), "--results_dir", str(tmp_path / "results"), "--gpu_ids", "-1", "--ngf", "8",
            "--ndf", "8", "--netG", "resnet_6blocks", "--norm", "instance", "--load_size", "32", "--crop_size", "32",
            "--amp", "bf16", "--selfcheck", "on", "--num_test", "1"]
    assert test_cli.main(argv) == 0
    assert "self-check: amp pass on this device" in capsys.readouterr().out


def test_every_rank_takes_the_decision_of_all(monkeypatch):
    """Under torchrun a path that failed on any rank is turned off on every rank."""
    from fastp2p import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)

    def gather(box, mine):
        box[0], box[1] = mine, {"fused_kernels": "wrong values"}

    monkeypatch.setattr(selfcheck.torch.distributed, "all_gather_object", gather)
    assert selfcheck.failures_of_all_ranks({}) == {"fused_kernels": "wrong values (rank 1)"}
    assert selfcheck.failures_of_all_ranks({"amp": "x"}) == {"amp": "x (rank 0)", "fused_kernels": "wrong values (rank 1)"}
