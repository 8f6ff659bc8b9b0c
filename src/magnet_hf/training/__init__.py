# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Training MagNet with `accelerate`: the loop (`train`), its arguments, optimisation and atomic checkpoints.

- `TrainingArguments`: a run's arguments, validated (its fields are the flags of `scripts/train.py`,
  `magnet_hf.commands.train`).
- `train(args) -> TrainingResult`: one run (single process, `accelerate launch` or torchrun).
- `build_optimizer_and_scheduler`, `parameter_groups`, `PolyWithWarmup`: the recipe's AdamW and poly decay.
- `latest_checkpoint`, `save_checkpoint`, `save_pretrained_atomic`: checkpoints that never load half-written.
- `run_ablation`, `summarise`, `format_report`: one run per variant (Mask Grounding, its mode, the alignment loss,
  the language masking) and seed, scored on held-out scenes with paired bootstrap intervals.
"""

from .ablation import ablation_variants, format_report, run_ablation, summarise
from .arguments import DEFAULT_LEARNING_RATES, TrainingArguments, TrainingError
from .checkpoints import latest_checkpoint, list_checkpoints, save_checkpoint, save_pretrained_atomic
from .optimization import PolyWithWarmup, build_optimizer_and_scheduler, no_decay_parameter_names, parameter_groups
from .trainer import NonFiniteLossError, TrainingResult, train
from .trainer_state import TrainerState

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "NonFiniteLossError",
    "PolyWithWarmup",
    "TrainingArguments",
    "TrainingError",
    "TrainerState",
    "TrainingResult",
    "ablation_variants",
    "build_optimizer_and_scheduler",
    "format_report",
    "latest_checkpoint",
    "list_checkpoints",
    "no_decay_parameter_names",
    "parameter_groups",
    "run_ablation",
    "save_checkpoint",
    "save_pretrained_atomic",
    "summarise",
    "train",
]
