# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""argparse value types shared by the command lines, so every CLI rejects bad numbers with the same one-line message."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _checked(parse: Callable[[str], float], accept: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    convert.__name__ = expected.replace(" ", "_")  # argparse names the type in its own messages
    return convert


positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
non_negative_int = _checked(int, lambda value: value >= 0, "a non-negative integer")
probability = _checked(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")
