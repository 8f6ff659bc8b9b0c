# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/evaluate.py` and `magnet-hf evaluate`: a model scored on a referring segmentation split
(`magnet_hf.evaluation`), single process or under `accelerate launch`."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import exit_status
from ..evaluation.evaluator import RESOLUTIONS, EvaluationError
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class EvaluateArguments:
    model: str = option(help="saved model folder (with its processor) or Hub id")
    dataset: str = option(help="save_to_disk folder, Hub id / local dataset, or 'synthetic'")
    split: str = option(help="split to evaluate, e.g. val, testA")
    batch_size: int = option(8, "samples per forward pass and process", minimum=1)
    resolution: str = option("released", "scoring resolution", choices=RESOLUTIONS)
    output: str | None = option(None, "write the results to this JSON file")
    overwrite: bool = option(False, "replace an existing --output")
    update_model_card: bool = option(False, "record the metrics in the model's README")
    max_samples: int | None = option(None, "evaluate only the first N (object, sentence) samples", minimum=1)
    synthetic_images: int = option(10, "images of --dataset synthetic", minimum=1)
    synthetic_seed: int = option(
        1, "seed of --dataset synthetic (default 1: scenes that training, seed 0 by default, never drew)", minimum=0
    )
    no_progress: bool = option(False, "hide the progress bar")
    verbose: bool = option(False, "show every progress bar of transformers")


def parser(prog: str | None = None):
    return build_parser(
        EvaluateArguments,
        prog=prog,
        description="Evaluate a MagNet model on a referring segmentation split (oIoU, mIoU, precision@t). "
        "Run with `accelerate launch` to use several processes.",
    )


def _refuse_unwritable_output(args: EvaluateArguments) -> None:
    """Refuses an existing --output and a folder that cannot be written before minutes are spent on the evaluation;
    only rank 0 writes, so only it may refuse (other ranks could see the file rank 0 has just written)."""
    from ..files import probe_writable, refuse_existing_output

    if not args.output or int(os.environ.get("RANK", "0")) != 0:
        return
    refuse_existing_output(args.output, args.overwrite, error=EvaluationError)
    folder = Path(args.output).expanduser().absolute().parent
    if not folder.is_dir():
        raise EvaluationError(f"Folder of the output does not exist: {folder}")
    try:
        probe_writable(folder)
    except OSError as error:
        raise EvaluationError(f"cannot write the output in {folder}: {error.strerror}.") from None


def _evaluate(args: EvaluateArguments) -> int:
    from ..evaluation import evaluator
    from ..evaluation.metrics import ReferringSegmentationMetric, format_metrics_table
    from ..progress import command_progress

    _refuse_unwritable_output(args)
    with command_progress(args.verbose):
        model, processor = evaluator.load_model_and_processor(args.model)
    split = evaluator.load_evaluation_split(
        args.dataset, args.split, synthetic_images=args.synthetic_images, synthetic_seed=args.synthetic_seed,
        image_size=int(getattr(model.config, "image_size", 128)),
    )  # fmt: skip
    samples = evaluator.evaluation_samples(split, args.max_samples)
    accelerator = evaluator.accelerator_if_launched()
    metric = ReferringSegmentationMetric()
    metrics = evaluator.evaluate_referring_segmentation(
        model, processor, samples, batch_size=args.batch_size, resolution=args.resolution, accelerator=accelerator,
        progress=not args.no_progress, metric=metric,
    )  # fmt: skip
    if accelerator is not None and not accelerator.is_main_process:
        return exit_status.OK
    print(format_metrics_table(metrics))
    results = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "resolution": args.resolution,
        "num_samples": metrics["num_samples"],
        "metrics": {key: value for key, value in metrics.items() if key != "num_samples"},
    }
    if args.dataset == "synthetic":
        results["by_kind"] = evaluator.metrics_by_expression_kind(metric, samples)
        print(evaluator.format_kind_table(results["by_kind"]))
    if args.output:
        print(f"Results written to {evaluator.write_results(results, args.output, args.overwrite)}")
    if args.update_model_card:
        if not Path(args.model).is_dir():
            raise EvaluationError("--update-model-card needs a local model folder, not a Hub id.")
        from ..hub.model_cards import update_model_card

        card = update_model_card(args.model, metrics, dataset=args.dataset, split=args.split, resolution=args.resolution)
        print(f"Model card updated: {card}")
    return exit_status.OK


@exit_status.guard_resources
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Runs the evaluation; returns the exit status (`exit_status`: 0 success, 2 bad input)."""
    try:
        (args,) = parse_dataclasses(parser(prog), [EvaluateArguments], argv)
    except SystemExit as exit:  # argparse already printed the usage and the reason
        return int(exit.code or 0)
    try:
        return _evaluate(args)
    except EvaluationError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
