"""Checkpoint sets: a kill at any step of a save leaves the old set or the new one, never a mix; a dead run's
temporary files go at the next start; one run per folder; refused and unwritable files get one-line errors."""

import os
import pickle

import pytest
import torch

from fastp2p import checkpoint
from fastp2p.checkpoint import CheckpointError, CheckpointSet, FolderLock, read_checkpoint, recover_folder


def write_set(folder, value):
    with CheckpointSet(str(folder)) as files:
        files.save("a.pth", {"w": torch.full((3,), float(value))})
        files.save("b.pth", {"w": torch.full((2,), float(value))})
        files.link("c.pth", "a.pth")


def values(folder):
    return {name: float(read_checkpoint(str(folder / name))["w"][0]) for name in ("a.pth", "b.pth", "c.pth")}


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs in the dying process."""


def test_a_kill_at_any_step_of_a_save_leaves_one_whole_set(tmp_path, monkeypatch):
    """Each file operation of a save in turn is where the process "dies" (nothing after it runs, no cleanup, as
    under kill -9); the next start's recovery must leave every file of the old set or every file of the new one."""
    operations = ("replace", "link", "remove", "fsync")
    count = {"n": 0, "death": None}

    def mortal(real):
        def operation(*args, **kwargs):
            count["n"] += 1
            if count["n"] == count["death"]:
                raise Killed
            return real(*args, **kwargs)
        return operation

    for name in operations:
        monkeypatch.setattr(checkpoint.os, name, mortal(getattr(os, name)))
    monkeypatch.setattr(CheckpointSet, "_discard", lambda self: None)
    write_set(tmp_path / "count", 1)
    steps = count["n"]
    assert steps >= 8  # 3 fsyncs of files, a journal, 3 renames, folder fsyncs, the journal's removal
    outcomes = set()
    for death in range(1, steps + 1):
        folder = tmp_path / str(death)
        count["death"] = None
        write_set(folder, 1)
        count["n"], count["death"] = 0, death
        with pytest.raises(Killed):
            write_set(folder, 2)
        count["death"] = None
        recover_folder(str(folder))
        found = values(folder)
        assert len(set(found.values())) == 1, (death, found)
        assert sorted(os.listdir(folder)) == ["a.pth", "b.pth", "c.pth"], death
        outcomes.add(found["a.pth"])
    assert outcomes == {1.0, 2.0}  # early deaths keep the old set, late ones roll the new one forward


def test_recovery_removes_a_dead_saves_temporary_files_and_says_so(tmp_path):
    write_set(tmp_path, 1)
    (tmp_path / ".tmp_0123456789ab_a.pth").write_bytes(b"x" * 2048)
    assert "removed 1 temporary file(s)" in recover_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "c.pth"]
    assert recover_folder(str(tmp_path)) is None


def test_a_failed_write_keeps_the_old_set_and_says_so_in_one_line(tmp_path, monkeypatch):
    write_set(tmp_path, 1)

    def disk_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"^cannot write checkpoint into .*: a write failed \(is the disk "
                                              r"full\?\); the checkpoints already there are kept$"):
        write_set(tmp_path, 2)
    assert values(tmp_path) == {"a.pth": 1.0, "b.pth": 1.0, "c.pth": 1.0}
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "c.pth"]


def test_linked_files_share_the_bytes_and_survive_the_next_save(tmp_path):
    write_set(tmp_path, 1)
    assert os.stat(tmp_path / "a.pth").st_ino == os.stat(tmp_path / "c.pth").st_ino
    with CheckpointSet(str(tmp_path)) as files:
        files.save("a.pth", {"w": torch.zeros(3)})
    assert float(read_checkpoint(str(tmp_path / "c.pth"))["w"][0]) == 1.0


def test_one_run_per_folder_and_a_dead_runs_lock_is_taken_over(tmp_path):
    first = FolderLock(str(tmp_path)).acquire()
    with pytest.raises(CheckpointError, match=rf"^another run is training into {tmp_path} \(pid {os.getpid()} on "):
        FolderLock(str(tmp_path)).acquire()
    first.release()  # as the kernel does when the holder dies
    FolderLock(str(tmp_path)).acquire().release()


class RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save({"w": RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(str(path))
    assert str(error.value) == (f"refusing to load {path}: it holds Python objects beyond tensors and plain "
                                f"containers, which would run code when loaded")
