"""Package layout: the Triton kernels live in the top-level ``kernels/`` folder of the repository but
install as ``fastp2p.kernels``, so that no top-level module named ``kernels`` (an unrelated PyPI
package) is ever created."""
from setuptools import setup

setup(
    packages=["fastp2p", "fastp2p.models", "fastp2p.data", "fastp2p.kernels"],
    package_dir={"fastp2p": "fastp2p", "fastp2p.kernels": "kernels"},
)
