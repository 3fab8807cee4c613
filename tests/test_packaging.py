"""A built wheel holds every module of the source tree, under the names the code imports."""

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setuptools_builds_wheels():
    """setuptools builds wheels itself from 70.1 on; older ones need the separate wheel package."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


@pytest.mark.skipif(not setuptools_builds_wheels(), reason="needs setuptools >= 70.1 to build a wheel offline")
def test_wheel_contains_every_module(tmp_path):
    # built from a copy: setuptools reuses a checkout's build/ folder, whose files from an earlier build would
    # stand in for a package the current setup.py leaves out
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                 "checkpoints", "results", "datasets"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True)
    (wheel,) = tmp_path.glob("fastp2p-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "fastp2p").rglob("*.py")
                if "__pycache__" not in path.parts}
    assert expected - in_wheel == set()
    assert not any(name.startswith("kernels/") for name in in_wheel), "a top-level 'kernels' package was installed"
