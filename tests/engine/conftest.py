"""The engine tests' fixtures (helpers.py holds what they share besides)."""

import pytest

from tests.engine.helpers import OFF, STEPS, train_steps
from tests.engine.helpers import full_fp32_convolutions, one_process_group  # noqa: F401 (fixtures, by name)


@pytest.fixture(scope="module")
def reference_runs():
    """The plain reference path's runs of both models, made once per module that compares against them."""
    return {model: train_steps(model, OFF, STEPS) for model in ("pix2pix", "cycle_gan")}
