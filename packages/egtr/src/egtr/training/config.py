"""Training configuration as data: dataclasses with the paper's hyper-parameters as defaults.

:func:`default_config` gives the defaults of a data set (``"vg"``/``"oi"``) and stage
(``"detector"`` = stage A, detector pre-training; ``"egtr"`` = stage B). :func:`load_config` reads a
YAML or JSON file on top of those defaults (the file's ``stage`` and ``data.dataset`` pick them) and
applies ``section.key=value`` overrides. The shipped files under ``configs/`` spell every value out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

STAGES = ("detector", "egtr")
STAGE_ALIASES = {"A": "detector", "a": "detector", "B": "egtr", "b": "egtr"}
DATASETS = ("vg", "oi")
AMP_MODES = ("fp32", "bf16", "fp16", "auto")
CONFIG_DIR = Path(__file__).parent / "configs"

_T = TypeVar("_T")


@dataclass
class DataConfig:
    """Which data set, where, and how it is loaded."""

    dataset: str = "vg"  # vg (Visual Genome, RelTR files) or oi (Open Images V6, BGNN files)
    root: str | None = None  # data set directory (egtr train --data)
    train_split: str = "train"
    val_split: str | None = "val"  # null: no validation (no best-checkpoint selection)
    num_workers: int = 4
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
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

    stage: str = "egtr"  # "detector" (stage A) or "egtr" (stage B)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent values."""
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.data.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {DATASETS}, got {self.data.dataset!r}")
        if self.train.amp not in AMP_MODES:
            raise ValueError(f"train.amp must be one of {AMP_MODES}, got {self.train.amp!r}")
        t = self.train
        for name in ("batch_size", "effective_batch", "validate_every", "log_every"):
            if getattr(t, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
        if t.effective_batch % t.batch_size:
            raise ValueError(
                f"train.effective_batch ({t.effective_batch}) must be a multiple of "
                f"train.batch_size ({t.batch_size})"
            )
        if len(t.betas) != 2:
            raise ValueError(f"train.betas must hold two numbers, got {t.betas}")

    @property
    def preset(self) -> str:
        """The EGTRConfig preset of the data set."""
        if self.model.preset is not None:
            return self.model.preset
        return "visual_genome" if self.data.dataset == "vg" else "open_images"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON ready)."""
        return dataclasses.asdict(self)


def normalise_stage(stage: str) -> str:
    """``"A"``/``"B"`` (any case) or the stage's name -> ``"detector"``/``"egtr"``."""
    stage = STAGE_ALIASES.get(stage, stage)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES} (or A/B)")
    return stage


def default_config(dataset: str = "vg", stage: str = "egtr") -> TrainingConfig:
    """The paper's hyper-parameters for ``dataset`` (``"vg"``/``"oi"``) and ``stage``."""
    stage = normalise_stage(stage)
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    config = TrainingConfig(stage=stage, data=DataConfig(dataset=dataset))
    if dataset == "oi":
        config.loss.connectivity = 90.0
        config.loss.rel_nonmatching_largest = False
    if stage == "detector":
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
) -> TrainingConfig:
    """Defaults + a YAML/JSON file (a path, a shipped config's name, or a dict) + overrides.

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML (``1e-5``,
    ``true``, ``[480, 512]``, ``null``).
    """
    data: dict[str, Any] = {}
    if isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        data = _read_mapping(_resolve_source(source))
    parsed = [_parse_override(text) for text in overrides]
    stage = _pick(data, parsed, "stage", "egtr")
    dataset = _pick(data, parsed, "data.dataset", "vg")
    config = default_config(str(dataset), normalise_stage(str(stage)))
    _apply(config, data, "")
    for key, value in parsed:
        _set_path(config, key, value)
    config.stage = normalise_stage(config.stage)
    config.validate()
    return config


def save_config(config: TrainingConfig, path: str | os.PathLike[str]) -> Path:
    """Write the full configuration (YAML for ``.yaml``/``.yml``, else JSON)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    else:
        text = json.dumps(config.to_dict(), indent=2) + "\n"
    path.write_text(text)
    return path


def _resolve_source(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if str(source) in shipped:
        return shipped[str(source)]
    raise FileNotFoundError(
        f"no configuration file {str(source)!r} (shipped configs: {', '.join(shipped)})"
    )


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a configuration must be a mapping, got {type(loaded).__name__}")
    return loaded


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    try:
        import yaml

        value = yaml.safe_load(raw)
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
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
            raise ValueError(f"unknown configuration key {where!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be a mapping, got {value!r}")
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
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise ValueError(f"{where}: unsupported type {hint!r}")  # pragma: no cover
