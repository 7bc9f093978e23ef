"""The model a training stage starts from.

Stage A (``detector``): the data set's paper configuration (plus overrides) with an ImageNet
backbone (the trainer freezes the relation head). Stage B (``egtr``): the stage-A model
directory (``model.init``), the frequency-bias table from the training counts installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from egtr.configuration import EGTRConfig
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.relation_head import build_rel_dist, build_triplet_dist
from egtr.training.config import TrainingConfig

logger = logging.getLogger(__name__)


def build_training_model(
    config: TrainingConfig,
    *,
    object_labels: Sequence[str] | None = None,
    predicate_labels: Sequence[str] | None = None,
    frequency_counts: Tensor | None = None,
) -> EGTRForSceneGraphGeneration:
    """Build (or load) the model for ``config.stage``.

    ``object_labels`` / ``predicate_labels`` (from the data set) set the class names and sizes
    of a new model and are checked against a loaded one. ``frequency_counts`` are the training
    split's ``fg[s_cls, o_cls, p]`` counts (stage B; ignored in stage A).
    """
    overrides = dict(config.model.overrides)
    if object_labels is not None:
        overrides["id2label"] = dict(enumerate(object_labels))
    if predicate_labels is not None:
        overrides["num_rel_labels"] = len(predicate_labels)
        overrides["rel_labels"] = list(predicate_labels)
    if config.model.init is not None:
        model = EGTRForSceneGraphGeneration.from_pretrained(config.model.init, **overrides)
    else:
        if config.stage == "egtr":
            logger.warning(
                "model.init is not set: training EGTR from a randomly initialised detector "
                "(the paper starts stage B from the stage-A detector)"
            )
        model = EGTRForSceneGraphGeneration(_new_config(config, overrides))
        _load_backbone(model, config)
    _check_sizes(model, object_labels, predicate_labels)
    if config.stage == "egtr" and frequency_counts is not None:
        model.set_frequency_statistics(
            build_triplet_dist(frequency_counts), build_rel_dist(frequency_counts)
        )
    return model


def _new_config(config: TrainingConfig, overrides: dict[str, Any]) -> EGTRConfig:
    preset = config.preset
    if preset == "visual_genome":
        model_config = EGTRConfig.visual_genome(**overrides)
    elif preset == "open_images":
        model_config = EGTRConfig.open_images(**overrides)
    else:
        raise ValueError(f"model.preset must be visual_genome or open_images, got {preset!r}")
    if config.model.pretrained_backbone and config.model.backbone_checkpoint is None:
        backbone = model_config.backbone_config
        if backbone is None or not hasattr(backbone, "use_pretrained_backbone"):
            raise ValueError("model.pretrained_backbone needs a timm backbone configuration")
        backbone.use_pretrained_backbone = True
    return model_config


def _load_backbone(model: EGTRForSceneGraphGeneration, config: TrainingConfig) -> None:
    path = config.model.backbone_checkpoint
    if path is None:
        return
    from vl_core.checkpoints import load_into, load_state_dict

    state = load_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    report = load_into(model.model.backbone.model, state, strict=False)
    if report.missing_keys or report.shape_mismatches:
        raise ValueError(f"backbone checkpoint {path} does not fit the backbone:\n{report}")
    logger.info("backbone weights loaded from %s (%d tensors)", path, report.loaded)


def _check_sizes(
    model: EGTRForSceneGraphGeneration,
    object_labels: Sequence[str] | None,
    predicate_labels: Sequence[str] | None,
) -> None:
    cfg = model.config
    if object_labels is not None and cfg.num_object_labels != len(object_labels):
        raise ValueError(
            f"the model has {cfg.num_object_labels} object classes, the data set "
            f"{len(object_labels)}"
        )
    if predicate_labels is not None and cfg.num_rel_labels != len(predicate_labels):
        raise ValueError(
            f"the model has {cfg.num_rel_labels} predicates, the data set {len(predicate_labels)}"
        )
