"""Optimiser: AdamW with EGTR's learning-rate groups, and the constant-LR phase schedule.

Groups (by parameter name, trainable parameters only): ``backbone`` (the CNN and the deformable
attention's ``sampling_offsets`` / ``reference_points``), ``new`` (the relation head, stage B) and
``detector`` (everything else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from egtr.training.config import TrainConfig

GROUPS = ("detector", "backbone", "new")


def parameter_group(
    name: str, backbone_patterns: Sequence[str], new_patterns: Sequence[str]
) -> str:
    """The learning-rate group of parameter ``name`` (patterns are substrings of the name)."""
    if any(pattern in name for pattern in new_patterns):
        return "new"
    if any(pattern in name for pattern in backbone_patterns):
        return "backbone"
    return "detector"


def group_learning_rates(config: TrainConfig) -> dict[str, float]:
    """Base learning rate of each group."""
    lr_new = config.lr if config.lr_new is None else config.lr_new
    return {"detector": config.lr, "backbone": config.lr_backbone, "new": lr_new}


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups (non-empty ones, in :data:`GROUPS` order), each with a ``name``."""
    members: dict[str, list[nn.Parameter]] = {group: [] for group in GROUPS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = parameter_group(name, config.backbone_patterns, config.new_patterns)
            members[group].append(param)
    rates = group_learning_rates(config)
    return [
        {"name": group, "params": members[group], "lr": rates[group], "base_lr": rates[group]}
        for group in GROUPS
        if members[group]
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (weight decay on every parameter, as the reference).

    Raises ``ValueError`` when the model has no trainable parameters.
    """
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.betas[0], config.betas[1]),
        weight_decay=config.weight_decay,
    )
    return optimizer


class PhaseSchedule:
    """Constant learning rate per group, times the phase's factor (1, then 0.1 in continuation).

    The reference trains at a constant rate and continues from the best checkpoint at a tenth of
    it; this object holds that factor and writes ``base_lr * factor`` into the groups.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 1.0) -> None:
        self.optimizer = optimizer
        self.factor = factor
        self.apply()

    def apply(self) -> None:
        """Set every group's learning rate to its ``base_lr`` times the current factor."""
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", group["lr"]) * self.factor

    def state_dict(self) -> dict[str, Any]:
        """``{"factor": ...}``, the schedule's state for a checkpoint."""
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the factor from a :meth:`state_dict` and apply it to the groups."""
        self.factor = float(state["factor"])
        self.apply()

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate of each group, by name."""
        return {
            str(group.get("name", i)): float(group["lr"])
            for i, group in enumerate(self.optimizer.param_groups)
        }
