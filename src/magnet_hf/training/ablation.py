# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Ablation of the auxiliary losses: one training setting with and without Mask Grounding and the alignment loss,
over several seeds, summarised as a table of best validation oIoU."""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .arguments import TrainingArguments, TrainingError, build_parser
from .trainer import train

#: (name, mask grounding on, alignment loss on)
VARIANTS: tuple[tuple[str, bool, bool], ...] = (
    ("full", True, True),
    ("no-mask-grounding", False, True),
    ("no-alignment", True, False),
    ("segmentation-only", False, False),
)


def run_ablation(base: TrainingArguments, seeds: Sequence[int], variants=VARIANTS) -> dict[str, list[float]]:
    """Trains `base` once per variant and seed into `base.output_dir/<variant>-seed<k>`; returns best val oIoU lists.

    A run whose folder already holds a finished model (`eval_results.json`) is read back instead of retrained, so an
    interrupted ablation can be restarted with the same command.
    """
    import json

    root = Path(base.output_dir)
    results: dict[str, list[float]] = {}
    for name, mask_grounding, alignment in variants:
        for seed in seeds:
            folder = root / f"{name}-seed{seed}"
            done = folder / "eval_results.json"
            if not done.is_file():
                args = dataclasses.replace(
                    base, output_dir=str(folder), seed=seed, no_mask_grounding=not mask_grounding,
                    no_alignment_loss=not alignment, resume="latest" if folder.exists() else None, overwrite=False,
                )
                train(args)
            best = json.loads(done.read_text())["best"]
            results.setdefault(name, []).append(float(best["overall_iou"]) if best else float("nan"))
    return results


def format_ablation_table(results: dict[str, list[float]]) -> str:
    """Markdown table: variant, oIoU per seed, mean and standard deviation (in %)."""
    lines = ["| variant | oIoU per seed | mean | std |", "|---|---|---|---|"]
    for name, values in results.items():
        per_seed = ", ".join(f"{100 * v:.2f}" for v in values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {name} | {per_seed} | {100 * statistics.mean(values):.2f} | {100 * std:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`scripts/ablate.py`: every flag of `train.py` plus `--seeds`; `--output-dir` holds one folder per run."""
    parser = build_parser()
    parser.prog = "ablate.py"
    parser.description = "Train one setting with/without Mask Grounding and the alignment loss over seeds; print oIoU."
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    values = vars(namespace)
    seeds = values.pop("seeds")
    values["config_overrides"] = dict(values["config_overrides"])
    try:
        if values["resume"] is not None or values["no_mask_grounding"] or values["no_alignment_loss"]:
            raise TrainingError("ablate.py chooses --resume and the loss switches itself; leave them out.")
        base = TrainingArguments(**values).validate()
        results = run_ablation(base, seeds)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_ablation_table(results))
    return 0
