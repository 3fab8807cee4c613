"""The value types of the flags: argparse ``type=`` functions whose errors say what the flag accepts."""

import argparse
import math


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def seed_value(text):
    """A 64-bit signed integer: torch's generators take no larger seed (a larger one failed inside torch)."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer from -2**63 to 2**63 - 1 (64 bits), got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def finite_float(text, requirement, accepts):
    """A float in a range: NaN or an infinity reaching an optimizer, a loss weight or a weight init would fail
    deep inside torch, or silently turn every weight into NaN."""
    value = float(text)
    if not (math.isfinite(value) and accepts(value)):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def finite_non_negative_float(text):
    return finite_float(text, "a finite number >= 0", lambda value: value >= 0)


def finite_positive_float(text):
    return finite_float(text, "a finite number > 0", lambda value: value > 0)


def adam_beta(text):
    return finite_float(text, "a number in [0, 1), as Adam needs", lambda value: 0 <= value < 1)


def auto_or_finite_positive_float(text):
    """'auto' (the rule of the flag decides), or a finite number > 0."""
    return text if text == "auto" else finite_float(text, "'auto' or a finite number > 0", lambda value: value > 0)
