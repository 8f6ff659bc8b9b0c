# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The arguments of a training run as one validated dataclass; its fields declare the flags of `scripts/train.py`
(`magnet_hf.commands.train`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Learning rate per preset when `--learning-rate` is not given. magnet-base follows the published recipe (AdamW
#: 5e-5 with pretrained encoders); magnet-tiny trains from scratch, which needs a much larger step: 2e-3 (with a few
#: warm-up steps) left the all-background phase within 10 steps on the synthetic set where 1e-3 needed 30-40.
DEFAULT_LEARNING_RATES: dict[str, float] = {"magnet-base": 5e-5, "magnet-tiny": 2e-3}
FINE_TUNING_LEARNING_RATE = 5e-5
MIXED_PRECISIONS = ("no", "bf16", "fp16")
EVAL_STRATEGIES = ("steps", "epoch", "no")


class TrainingError(ValueError):
    """A bad input or state of a training run; the CLI prints the message and exits non-zero."""


def _option(default: Any = dataclasses.MISSING, help: str | None = None, **metadata: Any) -> Any:
    """A field and its flag's metadata (see `magnet_hf.commands.arguments`)."""
    metadata["help"] = help
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_override(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` of `--config-override`: the value as JSON, else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


POSITIVE, NON_NEGATIVE = {"minimum": 1}, {"minimum": 0}
DATA, MODEL, OPTIMISATION, RUN = "data", "model", "optimisation", "run"


@dataclass
class TrainingArguments:
    """Everything a training run needs. Each field is a flag of `scripts/train.py` (`learning_rate` is
    `--learning-rate`); its metadata holds the flag's help and bounds."""

    dataset: str = _option(help="save_to_disk folder, Hub id / local dataset, or 'synthetic'", group=DATA)
    output_dir: str = _option(group=RUN)
    train_split: str = _option("train", group=DATA)
    eval_split: str = _option("val", group=DATA)
    hub_layout: str | None = _option(None, "convert a jxu124/refcoco* Hub dataset (needs --coco-images)",
                                     choices=["jxu124"], group=DATA)  # fmt: skip
    coco_images: str | None = _option(None, "COCO train2014 folder for --hub-layout jxu124", group=DATA)
    synthetic_images: int = _option(200, "images of --dataset synthetic (80/10/10 split)", **POSITIVE, group=DATA)
    synthetic_seed: int = _option(0, **NON_NEGATIVE, group=DATA)
    max_eval_samples: int | None = _option(None, "evaluate on the first N (object, sentence) samples", **POSITIVE, group=DATA)
    num_workers: int = _option(0, "DataLoader worker processes", **NON_NEGATIVE, group=DATA)

    preset: str | None = _option(None, "start from a preset: magnet-tiny or magnet-base", group=MODEL)
    model: str | None = _option(None, "fine-tune a converted/saved MagNet folder (with its processor)", group=MODEL)
    image_encoder: str | None = _option(None, "pretrained Swin: timm model name or local weights file", group=MODEL)
    text_encoder: str | None = _option(None, "pretrained BERT: Hub id or local folder", group=MODEL)
    tokenizer: str | None = _option(None, "Hub id or folder; default: the text encoder's, else one trained on the sentences",
                                    group=MODEL)  # fmt: skip
    vocab_size: int = _option(1000, "size bound of a tokenizer trained here", **POSITIVE, group=MODEL)
    image_size: int | None = _option(None, "input size (default: the preset's)", **POSITIVE, group=MODEL)
    config_overrides: dict[str, Any] = _option(dict, "set a MagNetConfig field (JSON value), e.g. drop_path_rate=0",
                                               flag="--config-override", action="append", parse=parse_override,
                                               metavar="KEY=VALUE", group=MODEL)  # fmt: skip
    no_mask_grounding: bool = _option(False, "train without the Mask Grounding loss", group=MODEL)
    no_alignment_loss: bool = _option(False, "train without the cross-modal alignment loss", group=MODEL)
    activation_checkpointing: bool = _option(False, "recompute activations in backward", group=MODEL)

    learning_rate: float | None = _option(None, "AdamW peak lr (default: 5e-5; 2e-3 for magnet-tiny from scratch)",
                                          group=OPTIMISATION)  # fmt: skip
    weight_decay: float = _option(1e-2, "0 for norms and position-bias tables", group=OPTIMISATION)
    warmup_steps: int = _option(0, "linear warm-up before the poly decay", **NON_NEGATIVE, group=OPTIMISATION)
    poly_power: float = _option(0.9, "lr = peak * (1 - step/total)^power", group=OPTIMISATION)
    num_epochs: int = _option(1, **POSITIVE, group=OPTIMISATION)
    max_steps: int | None = _option(None, "optimizer steps (overrides --num-epochs)", **POSITIVE, group=OPTIMISATION)
    batch_size: int = _option(8, "samples per process and micro-step", **POSITIVE, group=OPTIMISATION)
    gradient_accumulation_steps: int = _option(1, **POSITIVE, group=OPTIMISATION)
    max_grad_norm: float = _option(1.0, "gradient clipping (0: off)", group=OPTIMISATION)
    mixed_precision: str = _option("no", choices=MIXED_PRECISIONS, group=OPTIMISATION)
    seed: int = _option(0, **NON_NEGATIVE, group=OPTIMISATION)

    overwrite: bool = _option(False, "replace an existing non-empty --output-dir", group=RUN)
    resume: str | None = _option(None, "'latest' or a checkpoint folder (output_dir/checkpoints/step-N)", group=RUN)
    eval_strategy: str = _option("epoch", choices=EVAL_STRATEGIES, group=RUN)
    eval_steps: int | None = _option(None, "evaluate every N steps (with --eval-strategy steps)", **POSITIVE, group=RUN)
    eval_batch_size: int = _option(16, **POSITIVE, group=RUN)
    save_steps: int | None = _option(None, "checkpoint every N steps (default: at each evaluation)", **POSITIVE, group=RUN)
    save_total_limit: int = _option(2, "checkpoints kept", **POSITIVE, group=RUN)
    logging_steps: int = _option(10, **POSITIVE, group=RUN)
    report_to: list[str] = _option(lambda: ["auto"], "trackers: 'auto' (TensorBoard when installed), 'none', or names "
                                   "such as tensorboard wandb", group=RUN)  # fmt: skip
    cpu: bool = _option(False, "train on CPU even when a GPU is present", group=RUN)
    progress: bool = _option(True, "hide progress bars", flag="--no-progress", group=RUN)
    push_to_hub: str | None = _option(None, "push the final model and processor to this Hub repository",
                                      metavar="REPO", group=RUN)  # fmt: skip

    def validate(self) -> "TrainingArguments":
        """Checks what the flags' types cannot; raises `TrainingError` with the flag to fix."""
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
