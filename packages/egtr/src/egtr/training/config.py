"""Training configuration as data: dataclasses with the paper's hyper-parameters as defaults.

:func:`default_config` gives the defaults of a data set (``"vg"``/``"oi"``) and stage
(``"detector"`` = stage A, detector pre-training; ``"egtr"`` = stage B; ``"A"``/``"B"`` are
accepted as aliases). :func:`load_config` reads a YAML or JSON file on top of those defaults (the
file's ``stage`` and ``data.dataset`` pick them) and applies ``section.key=value`` overrides. The
shipped files under ``configs/`` spell every value out.

Every mistake is a `ConfigError` (a ``ValueError``) whose message names the file and line (syntax
errors), or the key (unknown keys, with the closest known key as a suggestion, and wrong types).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from egtr._recipe import STAGE_ALIASES, STAGES, TRAIN_SCALES, Stage, normalise_stage

__all__ = [
    "AMP_MODES",
    "DATASETS",
    "STAGES",
    "STAGE_ALIASES",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "MatcherConfig",
    "ModelConfig",
    "Stage",
    "TrainConfig",
    "TrainingConfig",
    "check_model_overrides",
    "default_config",
    "load_config",
    "normalise_stage",
    "save_config",
    "shipped_configs",
]

DATASETS = ("vg", "oi")
AMP_MODES = ("fp32", "bf16", "fp16", "auto")
CONFIG_DIR = Path(__file__).parent / "configs"

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A training configuration mistake; the message names the file and line, or the key."""


@dataclass
class DataConfig:
    """Which data set, where, and how it is loaded."""

    dataset: str = "vg"  # vg (Visual Genome, RelTR files) or oi (Open Images V6, BGNN files)
    root: str | None = None  # data set directory (egtr train --data)
    train_split: str = "train"
    val_split: str | None = "val"  # null: no validation (no best-checkpoint selection)
    num_workers: int = 4
    train_scales: list[int] = field(default_factory=lambda: list(TRAIN_SCALES))
    max_size: int = 1333  # longer side limit of every resize
    test_size: int = 800  # shorter side at validation
    max_boxes: int = 200  # Open Images training: images with more boxes are dropped
    # predicate pairs a training flip swaps, e.g. [["left of", "right of"]] (VG150, OI: none)
    flip_predicates: list[list[str]] = field(default_factory=list)
    max_train_images: int | None = None  # debugging: first N images only
    max_val_images: int | None = None


@dataclass
class ModelConfig:
    """How the model is built.

    Stage A starts from the data set's paper configuration (``preset`` + ``overrides``) with an
    ImageNet backbone; stage B loads ``init`` (the stage-A model directory).
    """

    preset: str | None = None  # visual_genome / open_images; null: from data.dataset
    init: str | None = None  # model directory to start from (stage B: stage A's best/)
    overrides: dict[str, Any] = field(default_factory=dict)  # EGTRConfig fields (new models)
    pretrained_backbone: bool = False  # timm ImageNet weights (needs the hub or its cache)
    backbone_checkpoint: str | None = None  # local ResNet weights (timm names) instead


@dataclass
class MatcherConfig:
    """Hungarian matching cost weights (focal class cost, L1, -GIoU)."""

    class_cost: float = 2.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0


@dataclass
class LossConfig:
    """Loss weights and the relation loss's smoothing and sampling."""

    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    rel: float = 15.0
    connectivity: float = 30.0  # 90 for Open Images
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smoothing_alpha: float = 1e-14  # uncertainty of a perfect match
    auxiliary: bool = False  # per-decoder-layer detection losses (stage A)
    rel_negatives_ratio: int | None = 80  # matched x matched negatives per positive
    rel_nonmatching_ratio: int | None = 80  # entries with an unmatched query per positive
    rel_negatives_largest: bool = True  # hardest (largest logit) negatives
    rel_nonmatching_largest: bool = True  # false (random) for Open Images


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""

    lr: float = 2e-6  # parameters that came from the detector
    lr_backbone: float = 2e-7  # backbone + deformable sampling_offsets / reference_points
    lr_new: float | None = 2e-4  # new relation parameters (null: same as lr)
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 0.1  # max gradient norm
    backbone_patterns: list[str] = field(
        default_factory=lambda: ["model.backbone.", "sampling_offsets", "reference_points"]
    )
    new_patterns: list[str] = field(default_factory=lambda: ["relation_head."])
    batch_size: int = 4  # images per device and micro-batch
    effective_batch: int = 64  # images per optimizer step (accumulation fills the gap)
    val_batch_size: int | None = None  # null: batch_size
    epochs: int = 50
    continuation_epochs: int = 25  # then from the best checkpoint at continuation_lr_factor x LR
    continuation_lr_factor: float = 0.1
    patience: int | None = 15  # stop a phase after this many validations without improvement
    validate_every: int = 1  # epochs
    amp: str = "fp32"  # CUDA mixed precision: fp32 (none), bf16, fp16 (GradScaler), auto (bf16 if supported)
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    log_every: int = 10  # optimizer steps between metrics-log lines
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends)
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps in all
    find_unused_parameters: bool = False  # DDP
    progress: bool = True  # tqdm bars (rank 0)
    tensorboard: bool = False  # also write TensorBoard events (if installed)


@dataclass
class TrainingConfig:
    """Everything ``egtr train`` needs besides the output directory."""

    stage: Stage = "egtr"  # "detector" (stage A) or "egtr" (stage B)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Check that the values fit together; returns nothing.

        Raises `ConfigError` (a ``ValueError``) naming the first wrong key, including an unknown
        ``model.overrides`` key (see :func:`check_model_overrides`).
        """
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.data.dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {DATASETS}, got {self.data.dataset!r}")
        if self.train.amp not in AMP_MODES:
            raise ConfigError(f"train.amp must be one of {AMP_MODES}, got {self.train.amp!r}")
        t = self.train
        for name in ("batch_size", "effective_batch", "validate_every", "log_every"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        if t.effective_batch % t.batch_size:
            raise ConfigError(
                f"train.effective_batch ({t.effective_batch}) must be a multiple of "
                f"train.batch_size ({t.batch_size})"
            )
        if len(t.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {t.betas}")
        check_model_overrides(self.model.overrides)

    @property
    def preset(self) -> str:
        """The EGTRConfig preset of the data set."""
        if self.model.preset is not None:
            return self.model.preset
        return "visual_genome" if self.data.dataset == "vg" else "open_images"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON ready)."""
        return dataclasses.asdict(self)


def default_config(dataset: str = "vg", stage: str = "egtr") -> TrainingConfig:
    """The paper's hyper-parameters for ``dataset`` (``"vg"``/``"oi"``) and ``stage``
    (``"detector"``/``"egtr"``, or ``"A"``/``"B"``).

    Returns a new `TrainingConfig`; raises `ConfigError` for an unknown data set or stage.
    """
    try:
        canonical = normalise_stage(stage)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    config = TrainingConfig(stage=canonical, data=DataConfig(dataset=dataset))
    if dataset == "oi":
        config.loss.connectivity = 90.0
        config.loss.rel_nonmatching_largest = False
    if canonical == "detector":
        config.model.pretrained_backbone = True
        config.loss.auxiliary = True
        config.train.lr = 1e-4
        config.train.lr_backbone = 1e-5
        config.train.lr_new = None
        config.train.effective_batch = 32
        config.train.epochs = 150
        config.train.continuation_epochs = 50
    return config


def shipped_configs() -> dict[str, Path]:
    """The configuration files shipped with egtr, by name (``vg_egtr``, ``oi_detector``...)."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def load_config(
    source: str | os.PathLike[str] | dict[str, Any] | None = None,
    overrides: typing.Sequence[str] = (),
    values: typing.Mapping[str, Any] | None = None,
) -> TrainingConfig:
    """Defaults + a YAML/JSON file (a path, a shipped config's name, or a dict) + overrides.

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML (``1e-5``,
    ``true``, ``[480, 512]``, ``null``). ``values`` maps ``"section.key"`` to values set last,
    as they are (the command line's ``--data``, ``--batch-size``...). Returns the validated
    `TrainingConfig`.

    Raises ``FileNotFoundError`` when ``source`` is neither a file nor a shipped config, and
    `ConfigError` for a syntax error (naming the file and line), an unknown key (naming it and
    the closest known key), a wrong type or inconsistent values.
    """
    data: dict[str, Any] = {}
    origin = ""
    if isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        path = _resolve_source(source)
        origin = f"{path}: "
        data = _read_mapping(path)
    parsed = [(text, *_parse_override(text)) for text in overrides]
    if "stage" in data and isinstance(data["stage"], str):
        data["stage"] = _stage(data["stage"], f"{origin}stage")
    for index, (text, key, value) in enumerate(parsed):
        if key == "stage" and isinstance(value, str):
            parsed[index] = (text, key, _stage(value, f"--set {text}"))
    pairs = [(key, value) for _, key, value in parsed]
    stage = _pick(data, pairs, "stage", "egtr")
    dataset = _pick(data, pairs, "data.dataset", "vg")
    try:
        config = default_config(str(dataset), str(stage))
    except ConfigError as exc:
        raise ConfigError(f"{origin}{exc}") from None
    try:
        _apply(config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{origin}{exc}") from None
    for text, key, value in parsed:
        try:
            _set_path(config, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (--set {text})") from None
    for key, value in (values or {}).items():
        _set_path(config, key, value)
    config.validate()
    return config


def save_config(config: TrainingConfig, path: str | os.PathLike[str]) -> Path:
    """Write the full configuration atomically (YAML for ``.yaml``/``.yml``, else JSON).

    Returns the path; raises ``OSError`` when it cannot be written.
    """
    from vl_core.files import atomic_write

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    else:
        text = json.dumps(config.to_dict(), indent=2) + "\n"
    return atomic_write(path, text)


# -- model.overrides ------------------------------------------------------------------------------

# accepted by EGTRConfig besides its fields: consumed when the timm backbone is set up
_OVERRIDE_EXTRAS = frozenset({"backbone", "use_timm_backbone"})
# accepted by backbone configurations besides their fields (the backbone mixin's arguments)
_BACKBONE_EXTRAS = frozenset(
    {"model_type", "out_features", "out_indices", "stage_names", "use_pretrained_backbone"}
)


def check_model_overrides(overrides: typing.Mapping[str, Any]) -> None:
    """Check that every key of ``model.overrides`` is an ``EGTRConfig`` setting (and every key
    of a ``backbone_config`` mapping with a known ``model_type`` one of that backbone's).

    Returns nothing; raises `ConfigError` naming the first unknown key and the closest known one
    (a misspelt key would otherwise be ignored silently, and the default used).
    """
    if not overrides:
        return
    from egtr.configuration import EGTRConfig

    known = _config_fields(EGTRConfig) | set(EGTRConfig.attribute_map) | _OVERRIDE_EXTRAS
    _check_keys(overrides, known, "model.overrides.", "EGTRConfig")
    backbone = overrides.get("backbone_config")
    if isinstance(backbone, dict) and isinstance(backbone.get("model_type"), str):
        from transformers import CONFIG_MAPPING

        model_type = backbone["model_type"]
        try:
            config_class = CONFIG_MAPPING[model_type]
        except KeyError:
            raise ConfigError(
                f"model.overrides.backbone_config.model_type {model_type!r} is not a "
                "transformers configuration (e.g. resnet, timm_backbone)"
            ) from None
        fields = _config_fields(config_class)
        known = fields | {name.lstrip("_") for name in fields} | _BACKBONE_EXTRAS
        _check_keys(backbone, known, "model.overrides.backbone_config.", config_class.__name__)


def _config_fields(config_class: Any) -> set[str]:
    if dataclasses.is_dataclass(config_class):
        return {f.name for f in dataclasses.fields(config_class)}
    import inspect

    return set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}


def _check_keys(
    mapping: typing.Mapping[str, Any], known: set[str] | frozenset[str], prefix: str, owner: str
) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(
                f"unknown configuration key {prefix + str(key)!r}"
                f"{_suggestion(str(key), known, prefix)}: {owner} has no such setting"
            )


def _suggestion(key: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'PREFIX.x'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# -- reading --------------------------------------------------------------------------------------


def _stage(value: str, where: str) -> str:
    try:
        return normalise_stage(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resolve_source(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if str(source) in shipped:
        return shipped[str(source)]
    if path.is_dir():
        raise ConfigError(f"--config {str(source)!r} is a directory, not a configuration file")
    raise FileNotFoundError(
        f"no configuration file {str(source)!r} (shipped configs: {', '.join(shipped)})"
    )


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if path.suffix == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
            ) from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_error(path, exc)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a configuration must be a mapping, got {type(loaded).__name__}")
    return loaded


def _yaml_error(path: Path, exc: Exception) -> str:
    """``FILE, line L, column C: invalid YAML: problem`` (one line) from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}"
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else str(problem)
    return f"{where}: invalid YAML: {detail}"


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not valid YAML: {problem}") from None
    return key.strip(), value


def _pick(data: dict[str, Any], parsed: list[tuple[str, Any]], dotted: str, default: str) -> Any:
    value: Any = default
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None:
        value = node
    for key, override in parsed:
        if key == dotted:
            value = override
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Set dataclass ``obj``'s fields from ``data`` (recursively), checking names and types."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(
                f"unknown configuration key {where!r}{_suggestion(str(key), names, prefix)}; "
                f"known: {known}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping, got {value!r}")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


def _set_path(config: TrainingConfig, dotted: str, value: Any) -> None:
    """One ``section.key=value`` override. Below a mapping field (``model.overrides.KEY`` or
    ``model.overrides.backbone_config.depths``) only that entry changes; the rest is kept."""
    parts = dotted.split(".")
    owner: Any = config
    for depth, part in enumerate(parts[:-1]):
        current = getattr(owner, part, None) if dataclasses.is_dataclass(owner) else None
        if isinstance(current, dict):
            merged = _with_entry(current, parts[depth + 1 :], value)
            _apply(owner, {part: merged}, ".".join(parts[:depth]) + "." if depth else "")
            return
        if not dataclasses.is_dataclass(current):
            break
        owner = current
    nested: Any = value
    for part in reversed(parts[1:]):
        nested = {part: nested}
    _apply(config, {parts[0]: nested}, "")


def _with_entry(mapping: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``mapping`` with ``mapping[k1][k2]... = value`` (missing levels created)."""
    out = dict(mapping)
    head = keys[0]
    if len(keys) == 1:
        out[head] = value
    else:
        inner = out.get(head)
        out[head] = _with_entry(inner if isinstance(inner, dict) else {}, keys[1:], value)
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints accepted as floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if hint is Any:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint!r}")  # pragma: no cover
