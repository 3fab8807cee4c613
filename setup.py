"""Package layout: the Triton kernels live in the top-level ``kernels/`` folder of the repository but
install as ``fastp2p.kernels``, so that no top-level module named ``kernels`` (an unrelated PyPI
package) is ever created. Every other package is found under ``fastp2p/``, so a new subpackage cannot be
left out of a wheel (an editable install finds it either way, a ``pip install .`` would not)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fastp2p", "fastp2p.*"]) + ["fastp2p.kernels"],
    package_dir={"fastp2p.kernels": "kernels"},
)
