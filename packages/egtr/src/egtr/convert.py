"""Import the authors' released Lightning checkpoints (transformers 4.18 naming) into our model.

A released run directory holds ``config.json`` (a transformers-4.18 ``DeformableDetrConfig`` with
EGTR's extra fields) and ``checkpoints/epoch=*.ckpt`` (state dict under ``state_dict``, keys
prefixed ``model.``). The key map below is verified against the released VG key list: every key
is either renamed onto a model key, or dropped for a stated reason; anything else fails.

Dropped on purpose:
- ``class_embed.{1..5}`` / ``bbox_embed.{1..5}``: without box refinement the reference shares one
  head across decoder layers and stores it six times; the copies are checked equal to ``.0``.
- ``backbone ... layerN.0.downsample.1.num_batches_tracked``: the reference left those BatchNorms
  unfrozen, so they carry a step counter. Our backbone uses frozen BatchNorm (transformers'
  ``DeformableDetrFrozenBatchNorm2d``), which has no counter and computes the same inference.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from egtr._labels import VG150_OBJECTS, VG150_PREDICATES
from egtr.builders import JSONFileError, WrongModelKindError, read_json_file, summarise_keys
from egtr.configuration import EGTRConfig
from egtr.modeling import EGTRForSceneGraphGeneration
from vl_core.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    LoadReport,
    RenameRule,
    load_into,
    load_state_dict,
    save_safetensors,
)
from vl_core.files import (
    OutputExistsError,
    atomic_write,
    file_fingerprint,
    refuse_input_as_output,
)

LEGACY_MODEL_TYPES = ("deformable_detr",)
"""``model_type`` values of the authors' run configurations (a config without one is accepted)."""

OUTPUT_FILES = ("model.safetensors", "README.md", "config.json")
"""What :func:`convert_checkpoint` writes into its output directory, in this order: the weights,
the model card (:func:`model_card`) and, last, the configuration that makes it a model directory."""

LIGHTNING_PREFIX = "model."

LEGACY_RENAME_RULES: tuple[RenameRule, ...] = (
    RenameRule(r"^model\.backbone\.conv_encoder\.model\.", "model.backbone.model."),
    RenameRule(r"^(model\.(?:en|de)coder\.layers\.\d+)\.(fc1|fc2)\.", r"\1.mlp.\2."),
    RenameRule(r"^(model\.decoder\.layers\.\d+\.self_attn)\.out_proj\.", r"\1.o_proj."),
    RenameRule(r"^class_embed\.0\.", "class_embed."),
    RenameRule(r"^bbox_embed\.0\.layers\.", "bbox_embed.layers."),
    RenameRule(r"^(proj_q|proj_k|final_sub_proj|final_obj_proj)\.", r"relation_head.\1."),
    RenameRule(r"^rel_predictor_gate\.", "relation_head.gate."),
    RenameRule(r"^rel_predictor\.layers\.", "relation_head.rel_mlp.layers."),
    RenameRule(r"^connectivity_layer\.layers\.", "relation_head.connectivity_mlp.layers."),
)
"""Released (transformers 4.18, Lightning prefix removed) key -> our key."""

DROPPED_KEYS: tuple[str, ...] = (r"\.num_batches_tracked$",)
"""Released keys with no counterpart (see the module docstring)."""

_SHARED_COPY = re.compile(r"^(class_embed|bbox_embed)\.([1-9]\d*)\.(.+)$")

_DETECTOR_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "num_queries",
    "num_feature_levels",
    "encoder_n_points",
    "decoder_n_points",
    "position_embedding_type",
    "dilation",
    "activation_function",
    "two_stage",
    "with_box_refine",
    "num_rel_labels",
    "use_freq_bias",
)


def strip_lightning_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove Lightning's ``model.`` prefix (present on every key of a released checkpoint).

    Returns a new dict (unchanged keys when not every key has the prefix).
    """
    keys = list(state_dict)
    if keys and all(k.startswith(LIGHTNING_PREFIX) for k in keys):
        return {k[len(LIGHTNING_PREFIX) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def drop_shared_head_copies(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``class_embed.N`` / ``bbox_embed.N`` (N >= 1) after checking they equal copy ``0``.

    Returns the remaining entries. Raises ``CheckpointError`` when a copy differs from copy 0.
    """
    kept: dict[str, torch.Tensor] = {}
    differing: list[str] = []
    for key, value in state_dict.items():
        match = _SHARED_COPY.match(key)
        if match is None:
            kept[key] = value
            continue
        first = f"{match.group(1)}.0.{match.group(3)}"
        if first in state_dict and not torch.equal(state_dict[first], value):
            differing.append(key)
        elif first not in state_dict:
            kept[key] = value  # left for the strict check to report
    if differing:
        raise CheckpointError(
            "per-layer detection heads differ from layer 0 (a box-refinement model?), "
            f"which EGTR does not use: {differing}"
        )
    return kept


def legacy_config(
    legacy: Mapping[str, Any],
    *,
    object_labels: list[str] | None = None,
    predicate_labels: list[str] | None = None,
) -> EGTRConfig:
    """An :class:`EGTRConfig` from the authors' transformers-4.18 ``config.json`` dict.

    Architecture fields are carried over; training-only fields are ignored. Label names: given
    ones, else real names in the legacy ``id2label``, else the VG150 names for a 150/50 model,
    else ``class_{i}`` / ``predicate_{i}``.

    Raises :class:`~egtr.builders.WrongModelKindError` for the configuration of another kind of
    model (``model_type`` other than ``deformable_detr``), ``ValueError`` for a configuration
    the released models cannot have (no label count, a non-timm backbone, wrong name counts).
    """
    kind = legacy.get("model_type")
    if kind is not None and kind not in LEGACY_MODEL_TYPES:
        hint = "; an egtr model directory needs no conversion" if kind == "egtr" else ""
        raise WrongModelKindError(
            f"the configuration describes a {kind!r} model, not the authors' Deformable DETR "
            f"run (model_type should be {LEGACY_MODEL_TYPES[0]!r}{hint})"
        )
    if legacy.get("use_timm_backbone") is False:
        raise ValueError("only the timm ResNet backbone of the released models is supported")
    kwargs: dict[str, Any] = {k: legacy[k] for k in _DETECTOR_FIELDS if k in legacy}
    kwargs["backbone"] = legacy.get("backbone", "resnet50")
    kwargs["use_timm_backbone"] = True
    if "logit_adjustment" in legacy:
        kwargs["use_logit_adjustment"] = bool(legacy["logit_adjustment"])
    if "logit_adj_tau" in legacy:
        kwargs["logit_adjustment_tau"] = float(legacy["logit_adj_tau"])
    num_labels = _legacy_num_labels(legacy)
    num_rel = int(legacy.get("num_rel_labels", 50))
    kwargs["num_rel_labels"] = num_rel
    if object_labels is None:
        names = [
            str(v) for _, v in sorted((int(k), v) for k, v in legacy.get("id2label", {}).items())
        ]
        generic = all(re.fullmatch(r"LABEL_\d+", n) for n in names)
        if len(names) == num_labels and not generic:
            object_labels = names
        elif num_labels == len(VG150_OBJECTS):
            object_labels = list(VG150_OBJECTS)
        else:
            object_labels = [f"class_{i}" for i in range(num_labels)]
    if predicate_labels is None and num_rel == len(VG150_PREDICATES) and num_labels == 150:
        predicate_labels = list(VG150_PREDICATES)
    if len(object_labels) != num_labels:
        raise ValueError(f"{len(object_labels)} object names for {num_labels} classes")
    kwargs["id2label"] = dict(enumerate(object_labels))
    kwargs["rel_labels"] = predicate_labels
    return EGTRConfig(**kwargs)


def _legacy_num_labels(legacy: Mapping[str, Any]) -> int:
    if "num_labels" in legacy:
        return int(legacy["num_labels"])
    if "id2label" in legacy:
        return len(legacy["id2label"])
    raise ValueError("the legacy config has neither num_labels nor id2label")


def read_categories(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Object and predicate names from a ``categories_dict.json`` (``{"obj": [...], "rel": [...]}``).

    Returns ``(object names, predicate names)``. Raises :class:`~egtr.builders.JSONFileError`
    (a ``ValueError``) naming the file (and line) when it is missing, not JSON or lacks the
    ``obj`` / ``rel`` lists.
    """
    data = read_json_file(path, "categories file")
    lists = {}
    for key in ("obj", "rel"):
        names = data.get(key) if isinstance(data, dict) else None
        if not isinstance(names, list):
            raise JSONFileError(
                f"the categories file has no {key!r} list ({path}): expected "
                '{"obj": [object names], "rel": [predicate names]}'
            )
        lists[key] = [str(x) for x in names]
    return lists["obj"], lists["rel"]


def load_legacy_weights(
    model: EGTRForSceneGraphGeneration, state_dict: Mapping[str, torch.Tensor]
) -> LoadReport:
    """Strictly load a released state dict (with or without the Lightning prefix) into ``model``.

    Returns the ``LoadReport``. Raises ``vl_core.checkpoints.CheckpointMismatchError`` listing
    missing, unexpected and wrongly shaped keys, ``CheckpointError`` for differing head copies.
    """
    cleaned = drop_shared_head_copies(strip_lightning_prefix(state_dict))
    return load_into(model, cleaned, rules=LEGACY_RENAME_RULES, strict=True, ignore=DROPPED_KEYS)


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    config: str | os.PathLike[str] | EGTRConfig,
    out: str | os.PathLike[str],
    *,
    categories: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """Convert a released ``.ckpt`` (+ its ``config.json``) into a model directory; returns the
    ``LoadReport`` of the strict load.

    The checkpoint is read with ``torch.load(weights_only=True)`` (via vl-core); nothing is
    unpickled beyond tensors and plain containers. Writes ``out/model.safetensors``, the model
    card ``out/README.md`` (:func:`model_card`: YAML metadata naming the source checkpoint and its
    SHA-256 and the conversion command) and then ``out/config.json`` (each atomically), loadable
    with :func:`egtr.builders.load_pretrained`.
    Nothing is written unless every key matched. ``out`` must not exist or be empty, unless
    ``overwrite`` (which replaces the model files of an EGTR model directory, never those of
    another kind of model); it may never hold one of the inputs.

    Raises :class:`~egtr.builders.JSONFileError` (a configuration or categories file that is
    missing or not JSON, named with its line), :class:`~egtr.builders.WrongModelKindError` (the
    configuration of another model), ``ValueError`` (a configuration the released models cannot
    have), ``vl_core.files.OutputExistsError`` (``out`` holds files, or an input),
    ``FileNotFoundError`` / ``CheckpointError`` (a missing or unreadable checkpoint) and
    ``CheckpointMismatchError`` (keys that do not match, listed).
    """
    target = Path(out)
    inputs = [Path(checkpoint)]
    if not isinstance(config, EGTRConfig):
        inputs.append(Path(config))
    if categories is not None:
        inputs.append(Path(categories))
    _check_output_directory(target, inputs, overwrite=overwrite)
    if isinstance(config, EGTRConfig):
        egtr_config = config
    else:
        legacy = read_json_file(config, "run configuration")
        if not isinstance(legacy, dict):
            raise JSONFileError(
                f"the run configuration is not a JSON object ({config}): give the run's config.json"
            )
        objects, predicates = read_categories(categories) if categories else (None, None)
        egtr_config = legacy_config(legacy, object_labels=objects, predicate_labels=predicates)
    state_dict = load_state_dict(checkpoint)
    model = EGTRForSceneGraphGeneration(egtr_config)
    report = load_legacy_weights(model, state_dict)
    card = model_card(
        model,
        checkpoint=checkpoint,
        config=None if isinstance(config, EGTRConfig) else config,
        categories=categories,
        out=out,
    )
    target.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), target / OUTPUT_FILES[0], metadata={"format": "pt"})
    atomic_write(target / OUTPUT_FILES[1], card)
    model.config.dtype = str(model.dtype).split(".")[1]  # as save_pretrained: "float32"
    model.config.architectures = [type(model).__name__]
    atomic_write(target / OUTPUT_FILES[2], model.config.to_json_string(use_diff=True))
    return report


_DATASETS = {(150, 50): ("visual_genome", "VG150"), (601, 30): ("open_images_v6", "Open Images V6")}
"""The data set of the paper's label spaces, by (objects, predicates)."""


def conversion_command(
    checkpoint: str | os.PathLike[str],
    config: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    categories: str | os.PathLike[str] | None = None,
) -> str | None:
    """The ``egtr convert`` command line that converts ``checkpoint`` with ``config`` into
    ``out``; returns it, or ``None`` when ``config`` is not a file (an ``EGTRConfig`` object)."""
    if config is None:
        return None
    words = ["egtr", "convert", "--checkpoint", os.fspath(checkpoint)]
    words += ["--config", os.fspath(config), "--out", os.fspath(out)]
    if categories is not None:
        words += ["--categories", os.fspath(categories)]
    return shlex.join(words)


def model_card(
    model: EGTRForSceneGraphGeneration,
    *,
    checkpoint: str | os.PathLike[str],
    config: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    categories: str | os.PathLike[str] | None = None,
) -> str:
    """The ``README.md`` model card :func:`convert_checkpoint` writes beside the weights; returns
    its text.

    It opens with YAML front matter, the metadata model hubs read (``license``, ``library_name``,
    ``pipeline_tag``, ``tags``, ``datasets``, the source checkpoint's file name and SHA-256 and
    the conversion command; no ``base_model``: the source is not on a model hub), followed by
    what the model is, where it came from and how to use and publish it. ``config`` is the run's
    ``config.json`` (``None`` for a configuration given as an object).

    Raises ``OSError`` when the checkpoint (or the run configuration) cannot be read.
    """
    from egtr import __version__

    egtr_config = model.config
    source = Path(checkpoint)
    source_sha = file_fingerprint(source)["sha256"]
    config_sha = None if config is None else file_fingerprint(config)["sha256"]
    command = conversion_command(checkpoint, config, out, categories)
    objects, predicates = egtr_config.num_object_labels, egtr_config.num_rel_labels
    dataset = _DATASETS.get((objects, predicates))
    params = sum(p.numel() for p in model.parameters())
    q = json.dumps  # a JSON string is a valid YAML (1.2) double-quoted scalar
    meta = [
        "---",
        "# Model card metadata for model hubs (Hugging Face reads this block), written by",
        "# `egtr convert`. The weights are the authors' released checkpoint, converted: they keep",
        "# the license of that release, so set `license` to it before publishing. The source is",
        "# not on a model hub, so there is no base_model. library_name is egtr: the files are a",
        '# transformers save_pretrained directory, but the architecture (model_type "egtr") comes',
        "# from the egtr package (`import egtr.modeling` registers it with transformers' AutoModel).",
        "license: other",
        "library_name: egtr",
        "pipeline_tag: object-detection",
        "tags:",
        *(
            f"  - {tag}"
            for tag in ("scene-graph-generation", "egtr", "deformable-detr", "converted")
        ),
    ]
    if dataset is not None:
        meta += [f"datasets:  # from the label counts ({objects} / {predicates}: {dataset[1]})"]
        meta += [f"  - {dataset[0]}"]
    else:
        meta += ["datasets: []  # not one of the paper's label spaces"]
    meta += [
        "source_checkpoint:",
        f"  file: {q(source.name)}",
        f"  sha256: {q(source_sha)}",
    ]
    if config is not None:
        meta += [f"  run_config: {q(Path(config).name)}", f"  run_config_sha256: {q(config_sha)}"]
    if command is not None:
        meta += [f"conversion_command: {q(command)}"]
    meta += ["---", ""]
    how = (
        f"```bash\n{command}\n```"
        if command is not None
        else "`egtr.convert_checkpoint` with a configuration given as an `EGTRConfig` object."
    )
    rows = [
        ("source checkpoint", f"`{source.name}`, SHA-256 `{source_sha}`"),
        *(
            [("run configuration", f"`{Path(config).name}`, SHA-256 `{config_sha}`")]
            if config is not None
            else []
        ),
        ("labels", f"{objects} objects, {predicates} predicates"),
        ("object queries", str(egtr_config.num_queries)),
        (
            "parameters",
            f"{params:,} ({params + model.triplet_dist.numel():,} with the frequency table)",
        ),
        ("converted with", f"egtr {__version__}"),
    ]
    body = [
        f"# {Path(out).name or 'egtr'}: EGTR, converted",
        "",
        'A scene graph generation model: EGTR (Im et al., "EGTR: Extracting Graph from '
        'Transformer for Scene Graph Generation", CVPR 2024), a Deformable DETR whose decoder '
        "self-attention gives the relation graph. These are the authors' released weights, "
        "converted by `egtr convert` into a `save_pretrained` directory "
        "(`config.json` + `model.safetensors`); every released tensor was accounted for.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## Conversion",
        "",
        how,
        "",
        "## Use",
        "",
        "```python",
        "from egtr import EGTRPredictor",
        "",
        'predictor = EGTRPredictor.from_pretrained("hf:ORG/NAME")  # or this directory\'s path',
        'graph = predictor.predict("photo.jpg")[0]',
        "graph.to_dict()  # objects (pixel boxes, labels), relations (subject, object, predicate)",
        "```",
        "",
        "```bash",
        "egtr predict photo.jpg --model hf:ORG/NAME --out graphs.jsonl",
        "```",
        "",
        "`import egtr.pipeline` adds the transformers task: "
        '`pipeline("scene-graph-generation", model="ORG/NAME")`.',
        "",
        "## Publishing",
        "",
        "Set `license` above, then upload the directory as it is (card included):",
        '`huggingface_hub.upload_folder(repo_id="ORG/NAME", folder_path="DIR")` or '
        '`hf upload ORG/NAME DIR`. (`model.push_to_hub("ORG/NAME")` uploads the weights and '
        "configuration with a generic card instead of this one.)",
        "",
    ]
    return "\n".join([*meta, *body])


def _check_output_directory(target: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse an output that is a file, holds files (unless ``overwrite``) or holds an input."""
    if target.exists() and not target.is_dir():
        raise OutputExistsError(
            f"the output must be a directory, but {str(target)!r} is a file: choose another --out"
        )
    refuse_input_as_output([target / name for name in OUTPUT_FILES], inputs)
    if not (target.is_dir() and any(target.iterdir())):
        return
    if not overwrite:
        raise OutputExistsError(
            f"the output directory {str(target)!r} is not empty: choose another --out, or pass "
            "--overwrite to replace its model files"
        )
    existing = target / "config.json"
    if existing.exists():
        try:
            kind = read_json_file(existing, "model configuration").get("model_type")
        except (JSONFileError, AttributeError):
            kind = None
        if kind != EGTRConfig.model_type:
            raise OutputExistsError(
                f"the output directory {str(target)!r} holds another kind of model "
                f"({existing}: model_type {kind!r}); --overwrite only replaces an EGTR model: "
                "choose another --out"
            )


def describe_mismatch(exc: CheckpointMismatchError) -> str:
    """One line for a failed strict conversion: each kind of problem with its first few keys."""
    report = exc.report
    parts = []
    if report.missing_keys:
        parts.append(f"missing {len(report.missing_keys)}: {summarise_keys(report.missing_keys)}")
    if report.unexpected_keys:
        parts.append(
            f"unexpected {len(report.unexpected_keys)}: {summarise_keys(report.unexpected_keys)}"
        )
    if report.shape_mismatches:
        shapes = [f"{k} ({list(c)} vs {list(m)})" for k, c, m in report.shape_mismatches]
        parts.append(f"wrong shape {len(shapes)} (checkpoint vs model): {summarise_keys(shapes)}")
    return "; ".join(parts)
