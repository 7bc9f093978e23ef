"""Training EGTR: matching, losses, configuration, optimiser groups and the (distributed) loop.

Stage A pre-trains the detector (``stage: detector``), stage B trains EGTR from it
(``stage: egtr``; one type, :data:`Stage`); see ``docs/egtr-training.md`` and ``egtr train --help``. Names are imported
lazily so that ``egtr --help`` (which registers ``egtr.training.cli``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vl_core.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ConfigError": "egtr.training.config",
    "CriterionOutput": "egtr.training.losses",
    "DataConfig": "egtr.training.config",
    "FitResult": "egtr.training.trainer",
    "HungarianMatcher": "egtr.training.matcher",
    "LossConfig": "egtr.training.config",
    "LossWeights": "egtr.training.losses",
    "Match": "egtr.training.matcher",
    "MatcherConfig": "egtr.training.config",
    "ModelConfig": "egtr.training.config",
    "PhaseSchedule": "egtr.training.optim",
    "RelationSampling": "egtr.training.losses",
    "SceneGraphCriterion": "egtr.training.losses",
    "Stage": "egtr.training.config",
    "TrainConfig": "egtr.training.config",
    "Trainer": "egtr.training.trainer",
    "TrainingConfig": "egtr.training.config",
    "box_losses": "egtr.training.losses",
    "build_criterion": "egtr.training.trainer",
    "build_optimizer": "egtr.training.optim",
    "build_training_model": "egtr.training.model_init",
    "default_config": "egtr.training.config",
    "focal_loss": "egtr.training.losses",
    "load_config": "egtr.training.config",
    "match_uncertainty": "egtr.training.losses",
    "parameter_group": "egtr.training.optim",
    "parameter_groups": "egtr.training.optim",
    "relation_targets": "egtr.training.losses",
    "sample_relation_entries": "egtr.training.losses",
    "save_config": "egtr.training.config",
    "shipped_configs": "egtr.training.config",
}

__all__ = [
    "ConfigError",
    "CriterionOutput",
    "DataConfig",
    "FitResult",
    "HungarianMatcher",
    "LossConfig",
    "LossWeights",
    "Match",
    "MatcherConfig",
    "ModelConfig",
    "PhaseSchedule",
    "RelationSampling",
    "SceneGraphCriterion",
    "Stage",
    "TrainConfig",
    "Trainer",
    "TrainingConfig",
    "box_losses",
    "build_criterion",
    "build_optimizer",
    "build_training_model",
    "default_config",
    "focal_loss",
    "load_config",
    "match_uncertainty",
    "parameter_group",
    "parameter_groups",
    "relation_targets",
    "sample_relation_entries",
    "save_config",
    "shipped_configs",
]

if TYPE_CHECKING:
    from egtr.training.config import (
        ConfigError,
        DataConfig,
        LossConfig,
        MatcherConfig,
        ModelConfig,
        Stage,
        TrainConfig,
        TrainingConfig,
        default_config,
        load_config,
        save_config,
        shipped_configs,
    )
    from egtr.training.losses import (
        CriterionOutput,
        LossWeights,
        RelationSampling,
        SceneGraphCriterion,
        box_losses,
        focal_loss,
        match_uncertainty,
        relation_targets,
        sample_relation_entries,
    )
    from egtr.training.matcher import HungarianMatcher, Match
    from egtr.training.model_init import build_training_model
    from egtr.training.optim import (
        PhaseSchedule,
        build_optimizer,
        parameter_group,
        parameter_groups,
    )
    from egtr.training.trainer import FitResult, Trainer, build_criterion


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
