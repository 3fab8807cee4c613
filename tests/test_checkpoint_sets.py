"""Checkpoint sets: a kill at any step of a save leaves the old set or the new one, never a mix; a dead run's
temporary files go at the next start; one run per folder; refused and unwritable files get one-line errors."""

import json
import os
import pickle

import pytest
import torch

from fastp2p import checkpoint_sets
from fastp2p.checkpoint import read_checkpoint
from fastp2p.checkpoint_sets import CheckpointSet, recover_folder
from fastp2p.errors import CheckpointError
from fastp2p.run_lock import FolderLock

A, B, C = "latest_net_G.pth", "latest_train_state.pth", "5_net_G.pth"  # sorted: C, A, B


def write_set(folder, value):
    with CheckpointSet(str(folder)) as files:
        files.save(A, {"w": torch.full((3,), float(value))})
        files.save(B, {"w": torch.full((2,), float(value))})
        files.link(C, A)


def values(folder):
    return {name: float(read_checkpoint(str(folder / name))["w"][0]) for name in (A, B, C)}


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
        monkeypatch.setattr(checkpoint_sets.os, name, mortal(getattr(os, name)))
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
        assert sorted(os.listdir(folder)) == sorted([A, B, C]), death
        outcomes.add(found[A])
    assert outcomes == {1.0, 2.0}  # early deaths keep the old set, late ones roll the new one forward


def test_recovery_removes_a_dead_saves_temporary_files_and_says_so(tmp_path):
    write_set(tmp_path, 1)
    (tmp_path / f".tmp_0123456789ab_{A}").write_bytes(b"x" * 2048)
    assert "removed 1 temporary file(s)" in recover_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([A, B, C])
    assert recover_folder(str(tmp_path)) is None


def test_a_failed_write_keeps_the_old_set_and_says_so_in_one_line(tmp_path, monkeypatch):
    write_set(tmp_path, 1)

    def disk_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint_sets.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"^cannot write checkpoint into .*: a write failed \(is the disk "
                                              r"full\?\); the checkpoints already there are kept$"):
        write_set(tmp_path, 2)
    assert values(tmp_path) == {A: 1.0, B: 1.0, C: 1.0}
    assert sorted(os.listdir(tmp_path)) == sorted([A, B, C])


def test_linked_files_share_the_bytes_and_survive_the_next_save(tmp_path):
    write_set(tmp_path, 1)
    assert os.stat(tmp_path / A).st_ino == os.stat(tmp_path / C).st_ino
    with CheckpointSet(str(tmp_path)) as files:
        files.save(A, {"w": torch.zeros(3)})
    assert float(read_checkpoint(str(tmp_path / C))["w"][0]) == 1.0


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


# -- a checkpoint folder from elsewhere: its journals are untrusted -------------------------------------------------

TOKEN = "0123456789ab"
JOURNAL = f".commit_{TOKEN}.json"


def tree(root):
    """Every path under ``root`` with its bytes (None for a folder), to show that nothing was touched."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def plant(folder, files, staged_files=()):
    """A journal ``files`` (a dict, or raw bytes) in ``folder``, beside a staged file for each name given."""
    for name in staged_files:
        (folder / name).write_bytes(b"staged")
    (folder / JOURNAL).write_bytes(files if isinstance(files, bytes) else json.dumps({"files": files}).encode())


@pytest.mark.parametrize("final, temp", [
    ("{outside}/owned.pth", f".tmp_{TOKEN}_latest_net_G.pth"),        # an absolute target
    ("../owned.pth", f".tmp_{TOKEN}_latest_net_G.pth"),               # a target above the folder
    ("latest_net_G.pth", "../victim.txt"),                           # moving a file in from outside
    ("latest_net_G.pth", "/etc/hostname"),
    ("../outside/latest_net_G.pth", f".tmp_{TOKEN}_../outside/latest_net_G.pth"),
    ("notes.txt", f".tmp_{TOKEN}_notes.txt"),                          # a plain name, but not one of a set's kinds
    ("latest_net_G.pth", f".tmp_{TOKEN}_latest_net_D.pth"),            # another file's temporary name
    ("latest_net_G.pth", ".tmp_ffffffffffff_latest_net_G.pth"),       # another save's temporary name
])
def test_a_journal_naming_anything_but_its_own_sets_files_is_refused_and_nothing_is_touched(tmp_path, final, temp):
    """A crafted journal must not make the recovery rename, create or remove anything, inside the folder or out."""
    folder = tmp_path / "run"
    folder.mkdir()
    final = final.replace("{outside}", str(tmp_path))
    (tmp_path / "victim.txt").write_bytes(b"the user's file")
    write_set(folder, 1)
    plant(folder, {final: temp}, staged_files=[f".tmp_{TOKEN}_latest_net_G.pth", f".tmp_{TOKEN}_notes.txt"])
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as error:
        recover_folder(str(folder))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"refusing the save journal {folder / JOURNAL}: ")
    assert message.endswith(f"remove it (and the .tmp_{TOKEN}_* files beside it) to drop that save, or pick "
                            f"another --name")
    assert tree(tmp_path) == before  # owned.pth among what is not there


@pytest.mark.parametrize("journal, why", [
    (b"", "an empty file"),
    (b'{"files": {"latest_net_G.pth": ".tmp_', "truncated"),
    (b"\xff\xfe\x00garbage", "not text"),
    (b"[1, 2, 3]", "a list"),
    (b'{"other": 1}', "no files key"),
    (b'{"files": ["latest_net_G.pth"]}', "files not a map"),
    (b'{"files": {}}', "no files"),
    (b'{"files": {"latest_net_G.pth": 7}}', "a number for a name"),
    (json.dumps({"files": {"iter_8_net_G.pth": f".tmp_{TOKEN}_iter_8_net_G.pth"}}).encode(), "a missing file"),
])
def test_a_damaged_journal_is_one_line_naming_it_and_nothing_is_touched(tmp_path, journal, why):
    write_set(tmp_path, 1)
    plant(tmp_path, journal)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^refusing the save journal {tmp_path / JOURNAL}: [^\n]+; remove "
                                              rf"it .* or pick another --name$"):
        recover_folder(str(tmp_path))
    assert tree(tmp_path) == before, why


def test_a_journal_naming_a_folder_or_a_link_is_refused(tmp_path):
    write_set(tmp_path, 1)
    (tmp_path / f".tmp_{TOKEN}_latest_net_D.pth").mkdir()
    (tmp_path / "outside.pth").write_bytes(b"x")
    os.symlink(tmp_path / "outside.pth", tmp_path / f".tmp_{TOKEN}_iter_4_net_G.pth")
    for staged in ({"latest_net_D.pth": f".tmp_{TOKEN}_latest_net_D.pth"},
                   {"iter_4_net_G.pth": f".tmp_{TOKEN}_iter_4_net_G.pth"}):
        plant(tmp_path, staged)
        with pytest.raises(CheckpointError, match="is a plain file in the folder"):
            recover_folder(str(tmp_path))
    os.remove(tmp_path / JOURNAL)
    assert "removed 1 temporary file(s)" in recover_folder(str(tmp_path))  # the link, not what it points at
    assert (tmp_path / "outside.pth").read_bytes() == b"x"


def test_a_journal_of_a_real_save_is_rolled_forward(tmp_path):
    """The check lets through what a save writes: the journal of a save killed right after its commit point."""
    write_set(tmp_path, 1)
    (tmp_path / f".tmp_{TOKEN}_{A}").write_bytes(open(tmp_path / A, "rb").read())
    plant(tmp_path, {A: f".tmp_{TOKEN}_{A}", B: f".tmp_{TOKEN}_{B}"})  # B already renamed before the kill
    assert "finished 1 checkpoint save(s)" in recover_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([A, B, C])


def test_a_set_never_stages_a_name_the_recovery_would_refuse(tmp_path):
    with pytest.raises(CheckpointError, match="not '../x.pth'"):
        with CheckpointSet(str(tmp_path)) as files:
            files.save("../x.pth", {"w": torch.zeros(1)})
    assert os.listdir(tmp_path) == [] and not (tmp_path.parent / "x.pth").exists()
