"""Flags generated from dataclass fields (`magnet_hf.commands.arguments`): names, defaults, bounds and messages."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from magnet_hf.commands.arguments import build_parser, option, parse_dataclasses


def _pair(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not value.isdigit():
        raise ValueError(f"expected KEY=NUMBER, got {text!r}")
    return key, int(value)


@dataclasses.dataclass
class Example:
    source: str = option(help="required: no default")
    batch_sizes: tuple[int, ...] = option((1,), "one or more", flag="--batch-size", minimum=1)
    rate: float = option(0.5, "a fraction", minimum=0, maximum=1)
    seed: int = option(0, minimum=0)
    overrides: dict[str, Any] = option(dict, "KEY=NUMBER, repeated", flag="--set", action="append", parse=_pair)
    tags: list[str] = option(lambda: ["auto"])
    progress: bool = option(True, "hide the bar", flag="--no-progress")
    overwrite: bool = option(False)
    train_step: bool | None = option(None, "time a step", negative="--no-train-step")
    mode: str = option("fast", choices=("fast", "exact"))


def parse(argv):
    return parse_dataclasses(build_parser(Example, prog="example"), [Example], argv)[0]


def test_defaults_and_every_kind_of_flag():
    assert parse(["--source", "x"]) == Example(source="x")
    parsed = parse(["--source", "x", "--batch-size", "2", "8", "--rate", "1", "--set", "a=1", "--set", "b=2", "--tags",
                    "tb", "wandb", "--no-progress", "--overwrite", "--no-train-step", "--mode", "exact"])  # fmt: skip
    assert parsed == Example(
        source="x", batch_sizes=(2, 8), rate=1.0, overrides={"a": 1, "b": 2}, tags=["tb", "wandb"], progress=False,
        overwrite=True, train_step=False, mode="exact",
    )  # fmt: skip
    assert parse(["--source", "x", "--train-step"]).train_step is True


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: --source"),
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["--batch-size", "two"], "argument --batch-size: expected a positive integer, got 'two'"),
        (["--seed", "-1"], "argument --seed: expected a non-negative integer, got -1"),
        (["--rate", "1.5"], "argument --rate: expected a number in [0, 1], got 1.5"),
        (["--rate", "nan"], "argument --rate: expected a number in [0, 1], got nan"),
        (["--set", "a=b"], "argument --set: expected KEY=NUMBER, got 'a=b'"),
        (["--train-step", "--no-train-step"], "not allowed with argument --train-step"),
        (["--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
        (["--source_x", "y"], "unrecognized arguments: --source_x"),  # one spelling per flag, unlike HfArgumentParser
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--source", "x", *argv] if argv else argv)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("example: error: ") and message in last_line


def test_help_lists_each_flag_once_with_its_help(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "--batch-size BATCH_SIZES [BATCH_SIZES ...]" in text and "one or more" in text
    assert "--no-progress" in text and "--progress" not in text.replace("--no-progress", "")
    assert "--source_" not in text and "--batch_size" not in text
