# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""AdamW parameter groups and the poly learning-rate schedule of the MagNet/LAVT recipe."""

from __future__ import annotations

import torch
from torch import nn

#: Parameters that the recipe exempts from weight decay, besides those of normalisation layers.
NO_DECAY_NAME_PARTS = ("relative_position_bias_table", "absolute_pos_embed", "level_embed")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters without weight decay: every parameter of a normalisation layer (its weight and
    bias) and position-bias tables / position embeddings of the image side (`NO_DECAY_NAME_PARTS`)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            names.update(f"{module_name}.{name}" if module_name else name for name, _ in module.named_parameters(recurse=False))
    names.update(name for name, _ in model.named_parameters() if any(part in name for part in NO_DECAY_NAME_PARTS))
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups in a fixed order (decayed, then not decayed); frozen parameters are left out."""
    exempt = no_decay_parameter_names(model)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name in exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fused_adamw_supported(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW (one kernel over all tensors) can step these groups: floating-point parameters on
    CUDA, or on CPU from torch 2.4. magnet-tiny has 804 parameter tensors, and on a 2-core CPU the default
    per-tensor-list path took 109 ms per step against 33 ms fused (a 96 px training step: 0.92x)."""
    from transformers.utils import is_torch_greater_or_equal

    devices = {"cuda", "cpu"} if is_torch_greater_or_equal("2.4") else {"cuda"}
    parameters = [parameter for group in groups for parameter in group["params"]]
    return bool(parameters) and all(p.is_floating_point() and p.device.type in devices for p in parameters)


class PolyWithWarmup:
    """Multiplier of the peak lr at step `step` (0-based): linear warm-up to 1 over `warmup_steps`, then
    `(1 - (step - warmup) / (total - warmup)) ** power` down to 0 at `total_steps`.

    A class rather than a lambda so that `LambdaLR.state_dict()` records it with the checkpoint.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, power: float = 0.9):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}.")
        self.total_steps, self.warmup_steps, self.power = total_steps, warmup_steps, power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return max(0.0, 1.0 - progress) ** self.power


def build_optimizer_and_scheduler(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int = 0,
    poly_power: float = 0.9,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameter_groups` (torch's fused kernel where it runs) and a per-step `LambdaLR` with
    `PolyWithWarmup`."""
    groups = parameter_groups(model, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, fused=fused_adamw_supported(groups) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolyWithWarmup(total_steps, warmup_steps, poly_power))
    return optimizer, scheduler
