"""The model a training stage starts from.

Stage ``"detector"`` (A): the data set's paper configuration (plus ``model.overrides``) with an
ImageNet backbone (the trainer freezes the relation head). Stage ``"egtr"`` (B): the stage-A model
directory (``model.init``), opened with the strict :func:`egtr.builders.load_pretrained`, the
frequency-bias table from the training counts installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from egtr.builders import ModelDirectoryError, load_pretrained, read_model_config, summarise_keys
from egtr.configuration import EGTRConfig
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.relation_head import build_rel_dist, build_triplet_dist
from egtr.training.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["build_training_model"]


def build_training_model(
    config: TrainingConfig,
    *,
    object_labels: Sequence[str] | None = None,
    predicate_labels: Sequence[str] | None = None,
    frequency_counts: Tensor | None = None,
) -> EGTRForSceneGraphGeneration:
    """Build (or load) the model for ``config.stage``; returns it (CPU, float32).

    ``object_labels`` / ``predicate_labels`` (from the data set) set the class names and sizes
    of a new model and are checked against a loaded one. ``frequency_counts`` are the training
    split's ``fg[s_cls, o_cls, p]`` counts (stage ``"egtr"``; ignored by ``"detector"``).

    Raises `ConfigError` (a ``ValueError``) when ``model.overrides`` cannot build a model, change
    the architecture of the ``model.init`` model, or the label counts differ from the data set's;
    :class:`egtr.builders.ModelDirectoryError` (a ``ValueError``) when ``model.init`` is not a
    complete EGTR model directory; ``FileNotFoundError`` / ``vl_core.checkpoints.CheckpointError``
    for an unreadable ``model.backbone_checkpoint``.
    """
    labels: dict[str, Any] = {}
    if object_labels is not None:
        labels["id2label"] = dict(enumerate(object_labels))
    if predicate_labels is not None:
        labels["num_rel_labels"] = len(predicate_labels)
        labels["rel_labels"] = list(predicate_labels)
    if config.model.init is not None:
        stored = read_model_config(config.model.init)
        where = f"the model in model.init ({config.model.init})"
        _check_sizes(stored, object_labels, predicate_labels, where)
        model = _load_init(config.model.init, stored, dict(config.model.overrides), labels)
    else:
        if config.stage == "egtr":
            logger.warning(
                "model.init is not set: training EGTR from a randomly initialised detector "
                "(the paper starts stage B from the stage-A detector)"
            )
        model = EGTRForSceneGraphGeneration(
            _new_config(config, {**config.model.overrides, **labels})
        )
        _load_backbone(model, config)
    _check_sizes(model.config, object_labels, predicate_labels, "the model")
    if config.stage == "egtr" and frequency_counts is not None:
        model.set_frequency_statistics(
            build_triplet_dist(frequency_counts), build_rel_dist(frequency_counts)
        )
    return model


def _load_init(
    init: str, stored: EGTRConfig, overrides: dict[str, Any], labels: dict[str, Any]
) -> EGTRForSceneGraphGeneration:
    """The ``model.init`` directory, loaded strictly with the overrides and the data's labels."""
    changed = _changed_keys(stored.to_dict(), overrides)
    try:
        return load_pretrained(init, **{**overrides, **labels})
    except ModelDirectoryError as exc:
        if not changed:
            raise
        raise ConfigError(
            f"model.overrides ({summarise_keys(changed)}) do not fit the model in model.init "
            f"({init}): {exc}. A model started from --init keeps its architecture: remove "
            "these overrides"
        ) from exc


def _changed_keys(
    stored: Mapping[str, Any], overrides: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """The override keys (dotted) whose value differs from the stored configuration's."""
    changed = []
    for key, value in overrides.items():
        current = stored.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            changed += _changed_keys(current, value, f"{prefix}{key}.")
        elif value != current:
            changed.append(f"{prefix}{key}")
    return changed


def _new_config(config: TrainingConfig, overrides: dict[str, Any]) -> EGTRConfig:
    preset = config.preset
    try:
        if preset == "visual_genome":
            model_config = EGTRConfig.visual_genome(**overrides)
        elif preset == "open_images":
            model_config = EGTRConfig.open_images(**overrides)
        else:
            raise ConfigError(f"model.preset must be visual_genome or open_images, got {preset!r}")
    except ConfigError:
        raise
    except Exception as exc:  # transformers' validation raises several types
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2]) if first else type(exc).__name__
        raise ConfigError(
            f"model.overrides do not make a valid EGTR configuration: {detail}"
        ) from exc
    if config.model.pretrained_backbone and config.model.backbone_checkpoint is None:
        backbone = model_config.backbone_config
        if backbone is None or not hasattr(backbone, "use_pretrained_backbone"):
            raise ConfigError("model.pretrained_backbone needs a timm backbone configuration")
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
        problems = []
        if report.missing_keys:
            problems.append(
                f"missing {len(report.missing_keys)}: {summarise_keys(report.missing_keys)}"
            )
        if report.shape_mismatches:
            problems.append(
                f"wrong shape {len(report.shape_mismatches)}: "
                f"{summarise_keys(report.shape_mismatches)}"
            )
        raise ConfigError(
            f"model.backbone_checkpoint {path} does not fit the backbone ({'; '.join(problems)})"
            ": give a ResNet state dict with timm key names"
        )
    logger.info("backbone weights loaded from %s (%d tensors)", path, report.loaded)


def _check_sizes(
    model_config: EGTRConfig,
    object_labels: Sequence[str] | None,
    predicate_labels: Sequence[str] | None,
    what: str,
) -> None:
    if object_labels is not None and model_config.num_object_labels != len(object_labels):
        raise ConfigError(
            f"{what} has {model_config.num_object_labels} object classes, the data set "
            f"{len(object_labels)}: start from a model of this data set"
        )
    if predicate_labels is not None and model_config.num_rel_labels != len(predicate_labels):
        raise ConfigError(
            f"{what} has {model_config.num_rel_labels} predicates, the data set "
            f"{len(predicate_labels)}: start from a model of this data set"
        )
