# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `scripts/train.py` as one validated dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..argtypes import non_negative_int, positive_int

#: Learning rate per preset when `--learning-rate` is not given. magnet-base follows the published recipe (AdamW
#: 5e-5 with pretrained encoders); magnet-tiny trains from scratch, which needs a much larger step: 2e-3 (with a few
#: warm-up steps) left the all-background phase within 10 steps on the synthetic set where 1e-3 needed 30-40.
DEFAULT_LEARNING_RATES: dict[str, float] = {"magnet-base": 5e-5, "magnet-tiny": 2e-3}
FINE_TUNING_LEARNING_RATE = 5e-5
MIXED_PRECISIONS = ("no", "bf16", "fp16")
EVAL_STRATEGIES = ("steps", "epoch", "no")


class TrainingError(ValueError):
    """A bad input or state of a training run; the CLI prints the message and exits non-zero."""


@dataclass
class TrainingArguments:
    """Everything a training run needs; field names match the CLI flags (`--learning-rate` -> `learning_rate`)."""

    dataset: str
    output_dir: str
    preset: str | None = None
    model: str | None = None
    image_encoder: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    vocab_size: int = 1000
    image_size: int | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    no_mask_grounding: bool = False
    no_alignment_loss: bool = False
    train_split: str = "train"
    eval_split: str = "val"
    hub_layout: str | None = None
    coco_images: str | None = None
    synthetic_images: int = 200
    synthetic_seed: int = 0
    max_eval_samples: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    poly_power: float = 0.9
    num_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    activation_checkpointing: bool = False
    eval_strategy: str = "epoch"
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["auto"])
    resume: str | None = None
    overwrite: bool = False
    seed: int = 0
    num_workers: int = 0
    cpu: bool = False
    progress: bool = True
    push_to_hub: str | None = None

    def validate(self) -> "TrainingArguments":
        """Checks values that argparse cannot; raises `TrainingError` with the flag to fix."""
        if (self.preset is None) == (self.model is None):
            raise TrainingError("give exactly one of --preset (train from a preset) or --model (fine-tune a converted checkpoint).")
        if self.model is not None and (self.image_encoder or self.text_encoder):
            raise TrainingError("--image-encoder/--text-encoder only apply to --preset; --model already holds all weights.")
        from ..configuration_magnet import PRESETS

        if self.preset is not None and self.preset not in PRESETS:
            raise TrainingError(f"unknown --preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise TrainingError(f"--mixed-precision must be one of {list(MIXED_PRECISIONS)}, got {self.mixed_precision!r}.")
        if self.eval_strategy not in EVAL_STRATEGIES:
            raise TrainingError(f"--eval-strategy must be one of {list(EVAL_STRATEGIES)}, got {self.eval_strategy!r}.")
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise TrainingError("--eval-strategy steps needs --eval-steps N.")
        numbers = {"--learning-rate": self.learning_rate, "--weight-decay": self.weight_decay,
                   "--max-grad-norm": self.max_grad_norm, "--poly-power": self.poly_power}
        for flag, value in numbers.items():
            # NaN compares false with everything, so the range checks below would let it through.
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise TrainingError(f"{flag} must be a finite number, got {value}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise TrainingError(f"--learning-rate must be positive, got {self.learning_rate}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.poly_power < 0:
            raise TrainingError("--weight-decay, --max-grad-norm and --poly-power must be non-negative.")
        if self.seed < 0:
            raise TrainingError(f"--seed must be non-negative, got {self.seed}.")
        if self.hub_layout == "jxu124" and not self.coco_images:
            raise TrainingError("--hub-layout jxu124 needs --coco-images (the layout has no pixels).")
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise TrainingError(f"--resume {self.resume!r} is neither 'latest' nor a checkpoint folder.")
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 32):
            raise TrainingError(f"--image-size must be a multiple of 32 of at least 32, got {self.image_size}.")
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            raise TrainingError(f"--push-to-hub takes a repository id 'owner/name', got {self.push_to_hub!r}.")
        return self

    def resolved_learning_rate(self) -> float:
        """`--learning-rate`, or the preset's default (the recipe's 5e-5 when fine-tuning a checkpoint)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.preset is not None:
            return DEFAULT_LEARNING_RATES.get(self.preset, FINE_TUNING_LEARNING_RATE)
        return FINE_TUNING_LEARNING_RATE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `scripts/train.py`."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train or fine-tune MagNet for referring image segmentation. Run with `accelerate launch` "
        "(or torchrun) for several processes; see the README's Training section.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="save_to_disk folder, Hub id / local dataset, or 'synthetic'")
    data.add_argument("--train-split", default="train")
    data.add_argument("--eval-split", default="val")
    data.add_argument("--hub-layout", choices=["jxu124"], help="convert a jxu124/refcoco* Hub dataset (needs --coco-images)")
    data.add_argument("--coco-images", help="COCO train2014 folder for --hub-layout jxu124")
    data.add_argument("--synthetic-images", type=positive_int, default=200, help="images of --dataset synthetic (80/10/10 split)")
    data.add_argument("--synthetic-seed", type=non_negative_int, default=0)
    data.add_argument("--max-eval-samples", type=positive_int, help="evaluate on the first N (object, sentence) samples")
    data.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", help="start from a preset: magnet-tiny or magnet-base")
    model.add_argument("--model", help="fine-tune a converted/saved MagNet folder (with its processor)")
    model.add_argument("--image-encoder", help="pretrained Swin: timm model name or local weights file")
    model.add_argument("--text-encoder", help="pretrained BERT: Hub id or local folder")
    model.add_argument("--tokenizer", help="Hub id or folder; default: the text encoder's, else one trained on the sentences")
    model.add_argument("--vocab-size", type=positive_int, default=1000, help="size bound of a tokenizer trained here")
    model.add_argument("--image-size", type=positive_int, help="input size (default: the preset's)")
    model.add_argument("--config-override", dest="config_overrides", type=_override, action="append", default=[],
                       metavar="KEY=VALUE", help="set a MagNetConfig field (JSON value), e.g. drop_path_rate=0")
    model.add_argument("--no-mask-grounding", action="store_true", help="train without the Mask Grounding loss")
    model.add_argument("--no-alignment-loss", action="store_true", help="train without the cross-modal alignment loss")
    model.add_argument("--activation-checkpointing", action="store_true", help="recompute activations in backward")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning-rate", type=float, help="AdamW peak lr (default: 5e-5; 2e-3 for magnet-tiny from scratch)")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="0 for norms and position-bias tables")
    optim.add_argument("--warmup-steps", type=non_negative_int, default=0, help="linear warm-up before the poly decay")
    optim.add_argument("--poly-power", type=float, default=0.9, help="lr = peak * (1 - step/total)^power")
    optim.add_argument("--num-epochs", type=positive_int, default=1)
    optim.add_argument("--max-steps", type=positive_int, help="optimizer steps (overrides --num-epochs)")
    optim.add_argument("--batch-size", type=positive_int, default=8, help="samples per process and micro-step")
    optim.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, default="no")
    optim.add_argument("--seed", type=non_negative_int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output-dir")
    run.add_argument("--resume", help="'latest' or a checkpoint folder (output_dir/checkpoints/step-N)")
    run.add_argument("--eval-strategy", choices=EVAL_STRATEGIES, default="epoch")
    run.add_argument("--eval-steps", type=positive_int, help="evaluate every N steps (with --eval-strategy steps)")
    run.add_argument("--eval-batch-size", type=positive_int, default=16)
    run.add_argument("--save-steps", type=positive_int, help="checkpoint every N steps (default: at each evaluation)")
    run.add_argument("--save-total-limit", type=positive_int, default=2, help="checkpoints kept")
    run.add_argument("--logging-steps", type=positive_int, default=10)
    run.add_argument("--report-to", nargs="+", default=["auto"],
                     help="trackers: 'auto' (TensorBoard when installed), 'none', or names such as tensorboard wandb")
    run.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    run.add_argument("--push-to-hub", metavar="REPO", help="push the final model and processor to this Hub repository")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainingArguments:
    """Parses and validates CLI flags; argparse exits with status 2 on a malformed flag."""
    namespace = build_parser().parse_args(argv)
    values = vars(namespace)
    values["config_overrides"] = dict(values["config_overrides"])
    return TrainingArguments(**values).validate()
