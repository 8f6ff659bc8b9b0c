# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/benchmark.py`: MagNet's forward (and training step) timed with random weights; see `benchmark_measure`
for what is measured. Each configuration runs in a fresh interpreter (`--worker`, this module) unless
`--no-isolate`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .arguments import add_dataclass_arguments, build_parser, into_dataclasses, option
from .benchmark_measure import BenchmarkSettings, benchmark_configuration, run_benchmark, write_json


@dataclasses.dataclass
class BenchmarkOutput:
    json: str | None = option(None, "write the full report here")
    overwrite: bool = option(False, "allow --json to replace an existing file")
    worker: str | None = option(None, argparse.SUPPRESS)  # one configuration's job, from `_run_isolated`


def parser() -> argparse.ArgumentParser:
    return add_dataclass_arguments(
        build_parser(
            BenchmarkSettings,
            prog="benchmark.py",
            description="Benchmark MagNet inference (and training for magnet-tiny) with random weights.",
        ),
        BenchmarkOutput,
    )


def _worker(job_text: str) -> None:
    job = json.loads(job_text)
    settings = job["settings"]
    settings["batch_sizes"] = tuple(settings["batch_sizes"])
    result = benchmark_configuration(
        BenchmarkSettings(**settings), job["batch_size"], job["matmul_gflops"], job["flops_per_image"]
    )
    Path(job["result_path"]).write_text(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints one line per configuration; argparse exits with status 2 on a bad flag."""
    flags = parser()
    settings, output = into_dataclasses(flags.parse_args(argv), BenchmarkSettings, BenchmarkOutput)
    if output.worker is not None:
        _worker(output.worker)
        return 0
    try:
        settings.validate()
    except ValueError as error:
        flags.error(str(error))
    if output.json is not None:
        path = Path(output.json)
        if path.exists() and not output.overwrite:
            flags.error(f"--json {path} exists; pass --overwrite to replace it.")
        if not path.parent.is_dir():
            flags.error(f"--json {path}: the folder {path.parent} does not exist.")
    report = run_benchmark(settings, log=print)
    if output.json is not None:
        write_json(report, output.json, overwrite=output.overwrite)
        print(f"wrote {output.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
