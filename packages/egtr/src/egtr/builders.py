"""Opening EGTR models: the paper's named builders and the one strict loader of models.

:func:`load_pretrained` is the only way egtr opens a model (``egtr predict``, ``eval``, ``info``,
training initialisation, :class:`~egtr.EGTRPredictor` and the builders all use it). A model is
named as on every egtr command line (:func:`resolve_model`): a local directory, or
``hf:ORG/NAME``, a Hugging Face Hub id, whose files are fetched once into the Hugging Face cache
(announced in one line; offline, only the cache is read). Nothing else is ever downloaded. It
refuses, in one line each:

- a path without ``config.json`` (:class:`ModelNotFoundError`);
- a hub id that cannot be had here: not cached while offline, unknown, unreachable
  (:class:`ModelUnavailableError`);
- a ``config.json`` that is not JSON, or is the configuration of another kind of model (a CLIP
  directory given to egtr; :class:`WrongModelKindError`);
- weights that do not fit the configuration: missing, unexpected or wrongly shaped keys are
  listed (the first few, then a count) instead of being random-initialised with a warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from egtr.configuration import EGTRConfig
from egtr.modeling import EGTRForSceneGraphGeneration
from vl_core import files
from vl_core.checkpoints import summarise_keys
from vl_core.cli import quiet_transformers

__all__ = [
    "HUB_PREFIX",
    "JSONFileError",
    "ModelDirectoryError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "WrongModelKindError",
    "egtr_open_images",
    "egtr_visual_genome",
    "is_hub_name",
    "load_pretrained",
    "read_json_file",
    "read_model_config",
    "resolve_model",
    "summarise_keys",
]

MODEL_TYPE = EGTRConfig.model_type
"""``model_type`` in the ``config.json`` of every EGTR model directory."""


HUB_PREFIX = "hf:"
"""``hf:ORG/NAME`` names a model on the Hugging Face Hub (``hf:DIR`` also names a local directory)."""

_WRITTEN_BY = "directory written by save_pretrained, `egtr train` or `egtr convert`"
_FIX = f"give a {_WRITTEN_BY}"
_HUB_HINT = (
    "Point --model at a local copy instead: a directory with config.json and model.safetensors "
    "(written by save_pretrained, `egtr train` or `egtr convert`), or download it once online"
)
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class JSONFileError(files.JSONFileError):
    """A JSON input file that cannot be read or parsed; the message names the file and line."""


class ModelDirectoryError(ValueError):
    """A path that does not hold a usable EGTR model; the message says what is wrong and where."""


class ModelNotFoundError(ModelDirectoryError, FileNotFoundError):
    """The path is not a model directory (no ``config.json``)."""


class WrongModelKindError(ModelDirectoryError):
    """``config.json`` describes another kind of model (its ``model_type`` is not ``egtr``)."""


class ModelUnavailableError(ModelNotFoundError):
    """A hub model (``hf:ORG/NAME``) whose files cannot be had here: not in the Hugging Face cache
    while offline, no such model, or a failed download. The message names the model and says how
    to point at a local copy instead."""


def is_hub_name(name: str | os.PathLike[str]) -> bool:
    """Whether :func:`resolve_model` takes ``name`` for a Hugging Face Hub id (``hf:ORG/NAME``
    that is not a local directory); returns the answer, reading nothing but the file system."""
    text = os.fspath(name)
    if Path(text).is_dir() or not text.startswith(HUB_PREFIX):
        return False
    return not Path(text[len(HUB_PREFIX) :]).expanduser().is_dir()


def resolve_model(
    name: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local directory that holds the model ``name``; returns it (nothing is read from it).

    ``name`` follows the command lines' rule: an existing directory is local, whatever its name;
    ``hf:DIR`` is the local directory ``DIR`` when it exists; any other ``hf:ORG/NAME`` is a
    Hugging Face Hub id, resolved to its snapshot in the Hugging Face cache, downloading
    ``config.json`` and the safetensors weights first when they are not cached (the first
    download says so in one line on stderr; offline, ``HF_HUB_OFFLINE=1``, only the cache is
    read). Anything else is returned as a path. ``revision`` and ``token`` apply to hub ids.

    Raises :class:`ModelUnavailableError` (a :class:`ModelNotFoundError`) for a hub id whose files
    cannot be had here, naming the id and how to point at a local copy.
    """
    text = os.fspath(name)
    if Path(text).is_dir() or not text.startswith(HUB_PREFIX):
        return Path(text)
    rest = text[len(HUB_PREFIX) :]
    if Path(rest).expanduser().is_dir():
        return Path(rest).expanduser()
    from vl_core.hub import ModelNotAvailableError, download_snapshot, looks_like_path

    if not rest or looks_like_path(rest):
        raise ModelNotFoundError(
            f"{text!r} is neither a local directory nor a Hugging Face Hub id: give "
            f"{HUB_PREFIX}ORG/NAME for a hub model, or a local {_WRITTEN_BY}"
        )
    try:
        return download_snapshot(
            rest, prog="egtr", hint=_HUB_HINT, name=text, revision=revision, token=token
        )
    except ModelNotAvailableError as exc:
        raise ModelUnavailableError(str(exc)) from exc


def _not_found_hint(path: Path) -> str:
    """The fix for a path without ``config.json``; mentions ``hf:`` for what looks like a hub id."""
    text = str(path)
    if not path.exists() and _HUB_ID.fullmatch(text):
        return f"{_FIX}, or {HUB_PREFIX}{text} for the Hugging Face Hub model {text}"
    return _FIX


def read_json_file(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """The parsed content of the JSON file ``path``.

    Raises :class:`JSONFileError` naming the file (and line and column) when it is missing,
    unreadable, not UTF-8 or not JSON.
    """
    return files.read_json(path, what, error=JSONFileError)


def _model_config_dict(path: Path) -> dict[str, Any]:
    """``config.json`` of ``path`` as a dict, refused when missing, not JSON or not EGTR's."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(
            f"{str(path)!r} is not an EGTR model directory (no config.json): "
            f"{_not_found_hint(path)}"
        )
    try:
        data = read_json_file(config_file, "model configuration")
    except JSONFileError as exc:
        raise ModelDirectoryError(str(exc)) from exc
    if not isinstance(data, dict):
        raise ModelDirectoryError(
            f"the model configuration is not a JSON object ({config_file}): {_FIX}"
        )
    kind = data.get("model_type")
    if kind != MODEL_TYPE:
        described = f"a {kind!r} model" if isinstance(kind, str) else "a model without model_type"
        fix = f"CLIP models are for clip4dm; egtr needs a {_WRITTEN_BY}" if kind == "clip" else _FIX
        raise WrongModelKindError(
            f"{str(path)!r} holds {described}, not an EGTR model "
            f"({config_file}: model_type should be {MODEL_TYPE!r}): {fix}"
        )
    return data


def read_model_config(path: str | os.PathLike[str], **overrides: Any) -> EGTRConfig:
    """The :class:`EGTRConfig` of the model ``path`` (no weights are read): a model directory or
    ``hf:ORG/NAME`` (see :func:`resolve_model`; a hub model is fetched whole, weights included).

    Raises :class:`ModelNotFoundError` (no ``config.json``), :class:`ModelUnavailableError` (a hub
    model that cannot be had here), :class:`WrongModelKindError` (another kind of model) or
    :class:`ModelDirectoryError` (not JSON, or not a valid EGTR configuration).
    """
    directory = resolve_model(path)
    _model_config_dict(directory)
    try:
        with quiet_transformers():
            config = EGTRConfig.from_pretrained(directory, **overrides)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelDirectoryError(
            f"config.json is not a valid EGTR configuration ({directory / 'config.json'}): {exc}"
        ) from exc
    if not isinstance(config, EGTRConfig):  # pragma: no cover - return_unused_kwargs not used
        raise ModelDirectoryError(f"cannot read the configuration of {str(directory)!r}")
    return config


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    **overrides: Any,
) -> EGTRForSceneGraphGeneration:
    """Load the model ``path`` strictly; returns the model (CPU, float32, eval mode).

    ``path`` is a model directory or ``hf:ORG/NAME``, a Hugging Face Hub id (see
    :func:`resolve_model`: fetched once into the Hugging Face cache, announced in one line; with
    ``HF_HUB_OFFLINE=1`` only the cache is read; ``revision`` and ``token`` apply to it).
    ``overrides`` change configuration fields as ``from_pretrained`` does (e.g. ``id2label``);
    they may not change a weight's shape. Every weight must be present, readable and of the right
    shape: ``from_pretrained`` alone would random-initialise a missing weight with only a
    warning.

    Raises :class:`ModelNotFoundError` (no ``config.json``), :class:`ModelUnavailableError` (a hub
    model that cannot be had here: one line naming it and how to use a local copy),
    :class:`WrongModelKindError` (not an EGTR model) or :class:`ModelDirectoryError` (unreadable
    files; missing, unexpected or wrongly shaped weights, listed). All are ``ValueError``.
    """
    directory = resolve_model(path, revision=revision, token=token)
    _model_config_dict(directory)
    try:
        with quiet_transformers():
            loaded: tuple[EGTRForSceneGraphGeneration, dict[str, Any]] = (
                EGTRForSceneGraphGeneration.from_pretrained(  # type: ignore[assignment]
                    directory,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,
                    **overrides,
                )
            )
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirectoryError(
            f"cannot read the EGTR model in {str(directory)!r} ({message}): check that the "
            "weights file is complete, or save / convert the model again"
        ) from exc
    model, info = loaded
    problems = _weight_problems(info)
    if problems:
        raise ModelDirectoryError(
            f"the weights in {str(directory)!r} do not fit its config.json ({'; '.join(problems)})"
            ": save or convert the model again (a different model's weights?)"
        )
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _weight_problems(info: Mapping[str, Any]) -> list[str]:
    """One phrase per kind of problem in ``from_pretrained``'s loading info."""
    problems = []
    for kind, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")):
        keys = list(info.get(kind) or ())
        if keys:
            problems.append(f"{label} {len(keys)}: {summarise_keys(keys)}")
    mismatched = list(info.get("mismatched_keys") or ())
    if mismatched:
        described = [_describe_mismatch(item) for item in mismatched]
        problems.append(f"wrong shape {len(described)}: {summarise_keys(described)}")
    errors = list(info.get("error_msgs") or ())
    if errors:
        problems.append(f"errors: {summarise_keys(errors, limit=1)}")
    return problems


def _describe_mismatch(item: Any) -> str:
    if isinstance(item, tuple) and len(item) == 3:
        key, stored, expected = item
        return f"{key} (file {list(stored)} vs model {list(expected)})"
    return str(item)


def egtr_visual_genome(
    *, weights: str | os.PathLike[str] | None = None, **config_overrides: Any
) -> EGTRForSceneGraphGeneration:
    """EGTR for Visual Genome (150 objects, 50 predicates); returns the model.

    ``weights``: ``None`` (random init, nothing downloaded), a local directory written by
    ``save_pretrained`` / ``egtr convert``, or ``hf:ORG/NAME`` (a Hugging Face Hub id), loaded
    with :func:`load_pretrained` (whose errors it raises); a model of another label space raises
    :class:`ModelDirectoryError`.
    """
    return _build(EGTRConfig.visual_genome(**config_overrides), weights)


def egtr_open_images(
    *, weights: str | os.PathLike[str] | None = None, **config_overrides: Any
) -> EGTRForSceneGraphGeneration:
    """EGTR for Open Images V6 (601 objects, 30 predicates); returns the model.

    ``weights`` and errors as for :func:`egtr_visual_genome`.
    """
    return _build(EGTRConfig.open_images(**config_overrides), weights)


def _build(
    config: EGTRConfig, weights: str | os.PathLike[str] | None
) -> EGTRForSceneGraphGeneration:
    if weights is None:
        return EGTRForSceneGraphGeneration(config)
    path = resolve_model(weights)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"weights={str(weights)!r} is not a local EGTR model directory (no config.json); "
            f"nothing is downloaded unless a hub id ({HUB_PREFIX}ORG/NAME) is given — convert a "
            "released checkpoint with `egtr convert` first"
        )
    model = load_pretrained(path)
    loaded = model.config
    expected = (config.num_object_labels, config.num_rel_labels)
    if (loaded.num_object_labels, loaded.num_rel_labels) != expected:
        raise ModelDirectoryError(
            f"{str(path)!r} holds a model with {loaded.num_object_labels} objects / "
            f"{loaded.num_rel_labels} predicates, expected {expected[0]} / {expected[1]}"
        )
    return model
