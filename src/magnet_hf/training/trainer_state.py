# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The training loop's own state (`trainer_state.json`): where the run is, what it measured and logged, and what it
was started with, saved as JSON beside every checkpoint and the final model.

The JSON keys are the fields below, as they have always been written, so the state of an older checkpoint loads
(missing keys take their defaults, unknown ones are ignored), and readers of the file (`training/ablation.py` reads
`eval_history` and `log_history[*].seconds_per_step`) need no change.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import TrainingError

TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where a run stands.

    Attributes:
        global_step: optimizer steps done; also the position in the data (see `trainer.py`).
        best_metric, best_step: the best validation oIoU so far and the step it was measured at.
        eval_history: one `{"step", **metrics}` per evaluation.
        log_history: one `{"step", "loss", "lr", "seconds_per_step", ...}` (means over the logging window) per log.
        epoch: `global_step` in epochs, when saved.
        total_steps, global_batch, num_processes: the run's shape; a resume must match the first two.
        interrupted: whether the save was the one SIGTERM asked for.
    """

    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    epoch: float = 0.0
    total_steps: int | None = None
    global_batch: int | None = None
    num_processes: int = 1
    interrupted: bool = False

    def record_evaluation(self, metrics: dict[str, Any], metric: str) -> bool:
        """Adds an evaluation at the current step to the history; returns whether `metrics[metric]` is a new best
        (and records it as such)."""
        self.eval_history.append({"step": self.global_step, **metrics})
        if self.best_metric is not None and not metrics[metric] > self.best_metric:
            return False
        self.best_metric, self.best_step = metrics[metric], self.global_step
        return True

    def evaluation_at(self, step: int | None) -> dict[str, Any] | None:
        """The evaluation recorded at `step`, if any."""
        return next((entry for entry in self.eval_history if entry["step"] == step), None) if step is not None else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "trainer state") -> "TrainerState":
        """The state in `data` (the JSON of any version of this file).

        Raises:
            TrainingError: `data` is not a mapping with a non-negative integer `global_step`.
        """
        step = data.get("global_step") if isinstance(data, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise TrainingError(f"{source} has no non-negative integer 'global_step'; it is not a trainer state.")
        names = {item.name for item in dataclasses.fields(cls)}
        state = cls(**{key: value for key, value in data.items() if key in names})
        if not isinstance(state.num_processes, int) or state.num_processes < 1:
            state.num_processes = 1
        return state

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TrainerState":
        """The state saved in `folder/trainer_state.json`.

        Raises:
            TrainingError: the file is missing, not JSON, or not a trainer state.
        """
        path = Path(folder) / TRAINER_STATE
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TrainingError(f"{path} is unreadable or not JSON ({error}).") from None
        return cls.from_dict(data, source=str(path))


__all__ = ["TRAINER_STATE", "TrainerState"]
