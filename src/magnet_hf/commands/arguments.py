# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Command-line flags generated from dataclasses, so that every argument is declared once: its field, default and
help are the flag's.

This follows `transformers.HfArgumentParser` (one dataclass field per flag, `metadata={"help": ...}`) without
importing transformers, which takes seconds: `magnet-hf --help` and argument errors must answer at once. It also
keeps the flags' exact names (one spelling each, `--batch-size`), rejects bad numbers with a one-line message,
and knows the few shapes magnet_hf's commands need.

Field metadata understood here (all optional):

- `help`: the help text (`argparse.SUPPRESS` hides the flag).
- `flag`: the flag's name when it is not `--` + the field name with dashes (`--no-progress` for `progress`).
- `negative`: for a `bool | None` field, the name of the flag that sets it to `False` (beside `flag`, which sets
  `True`; neither leaves `None`).
- `minimum`, `maximum`: bounds of a number, checked while parsing (`expected a positive integer, got 0`).
- `parse`: a function from the text to the value; a `ValueError` it raises becomes the one-line message.
- `choices`, `metavar`, `nargs`, `action` (`"append"`): as in argparse.
- `group`: the help section of the flag; `exclusive`: the name of a set of mutually exclusive flags.

A bool field defaulting to `False` is a switch (`--overwrite`); one defaulting to `True` is switched off by its flag.
A `list` or `tuple` field takes one or more values; a `dict` field collects `(key, value)` pairs from `parse`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


def _plain_type(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None`, and whether `None` was allowed."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in arguments:
        rest = [argument for argument in arguments if argument is not type(None)]
        return rest[0], True
    return annotation, False


def _expected(kind: type, minimum: Any, maximum: Any) -> str:
    if kind is int and maximum is None and minimum in (0, 1):
        return "a positive integer" if minimum == 1 else "a non-negative integer"
    noun = "an integer" if kind is int else "a number"
    if minimum is not None and maximum is not None:
        return f"{noun} in [{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"{noun} of at least {minimum:g}"
    return f"{noun} of at most {maximum:g}" if maximum is not None else noun


def checked_number(kind: type, minimum: Any = None, maximum: Any = None) -> Callable[[str], Any]:
    """An argparse `type` reading `kind` (int or float) within the bounds, with a one-line message otherwise."""
    expected = _expected(kind, minimum, maximum)

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    convert.__name__ = expected.replace(" ", "_")  # argparse names the type in its own messages
    return convert


def _with_message(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _value_type(field: dataclasses.Field, element: Any) -> Callable[[str], Any] | None:
    metadata = field.metadata
    if "parse" in metadata:
        return _with_message(metadata["parse"])
    if element in (int, float) and ("minimum" in metadata or "maximum" in metadata):
        return checked_number(element, metadata.get("minimum"), metadata.get("maximum"))
    return element if element in (int, float) else None


def _add_field(parser: argparse.ArgumentParser, containers: dict[str, Any], field: dataclasses.Field, hint: Any) -> None:
    metadata = field.metadata
    kind, _ = _plain_type(hint)  # `None` is only ever the default: argparse leaves an absent flag at it
    origin = typing.get_origin(kind)
    flag = metadata.get("flag", "--" + field.name.replace("_", "-"))
    options: dict[str, Any] = {"dest": field.name, "help": metadata.get("help")}
    for key in ("choices", "metavar"):
        if key in metadata:
            options[key] = metadata[key]
    if field.default is not dataclasses.MISSING:
        options["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        options["default"] = field.default_factory()
    else:
        options["required"] = True

    container = parser
    if "group" in metadata:
        if metadata["group"] not in containers:
            containers[metadata["group"]] = parser.add_argument_group(metadata["group"])
        container = containers[metadata["group"]]
    if "exclusive" in metadata or "negative" in metadata:
        key = ("exclusive", metadata.get("exclusive", field.name))
        if key not in containers:
            containers[key] = container.add_mutually_exclusive_group()
        container = containers[key]

    if kind is bool:
        if "negative" in metadata:
            container.add_argument(flag, action="store_true", **options)
            container.add_argument(metadata["negative"], dest=field.name, action="store_false", help=metadata.get("negative_help"))
            return
        options["action"] = "store_false" if field.default is True else "store_true"
        container.add_argument(flag, **options)
        return
    if origin in (list, tuple, dict) or metadata.get("action") == "append":
        element = typing.get_args(kind)[0] if origin in (list, tuple) else str
        options["nargs"] = metadata.get("nargs", "+")
        if metadata.get("action") == "append":
            options.pop("nargs")
            options.update(action="append", default=[])  # argparse appends to the default, so it must be a list
    else:
        element = kind
    value_type = _value_type(field, element)
    if value_type is not None:
        options["type"] = value_type
    container.add_argument(flag, **options)


def option(default: Any = dataclasses.MISSING, help: str | None = None, **metadata: Any) -> Any:
    """A dataclass field with its flag's metadata: `option(8, "samples per batch", minimum=1)`; a callable default
    (`list`, `lambda: [1]`) is a default factory."""
    metadata["help"] = help
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def add_dataclass_arguments(parser: argparse.ArgumentParser, *dataclass_types: type) -> argparse.ArgumentParser:
    """Adds one flag per field of each dataclass to `parser` (see the module docstring for the field metadata)."""
    containers: dict[Any, Any] = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for field in dataclasses.fields(dataclass_type):
            if field.init:
                _add_field(parser, containers, field, hints[field.name])
    return parser


def build_parser(*dataclass_types: type, **parser_options: Any) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser(**parser_options)` with the flags of `dataclass_types`."""
    return add_dataclass_arguments(argparse.ArgumentParser(**parser_options), *dataclass_types)


def into_dataclasses(namespace: argparse.Namespace, *dataclass_types: type) -> tuple[Any, ...]:
    """The parsed `namespace` as one instance per dataclass (lists become the field's tuple or dict)."""
    values = vars(namespace)
    instances = []
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        arguments = {}
        for field in dataclasses.fields(dataclass_type):
            if not field.init or field.name not in values:
                continue
            value = values[field.name]
            origin = typing.get_origin(_plain_type(hints[field.name])[0])
            if value is not None and origin in (tuple, dict):
                value = origin(value)
            arguments[field.name] = value
        instances.append(dataclass_type(**arguments))
    return tuple(instances)


def parse_dataclasses(
    parser: argparse.ArgumentParser, dataclass_types: Sequence[type], argv: Sequence[str] | None = None
) -> tuple[Any, ...]:
    """Parses `argv` with `parser` into one instance per dataclass; argparse exits with status 2 on a bad flag."""
    return into_dataclasses(parser.parse_args(argv), *dataclass_types)


__all__ = ["add_dataclass_arguments", "build_parser", "checked_number", "into_dataclasses", "option", "parse_dataclasses"]
