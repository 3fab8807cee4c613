"""Every package is found under ``fastp2p/`` (the Triton kernels are ``fastp2p/kernels``), so a new subpackage cannot
be left out of a wheel (an editable install finds it either way, a ``pip install .`` would not), and no top-level
module named ``kernels`` (an unrelated PyPI package) is ever created."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["fastp2p", "fastp2p.*"]))
