"""Safe checkpoint loading: safetensors or weights-only pickles, key renaming, and a load report.

Pickles are only ever read with ``torch.load(..., weights_only=True)``; a file whose pickle would
run code is refused with `UnsafeCheckpointError`. `load_into` compares checkpoint and model keys
and shapes before touching the model, so a strict failure leaves the model unchanged.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from torch import nn

from vl_core.files import atomic_save

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "RenameRule",
    "UnsafeCheckpointError",
    "load_into",
    "load_state_dict",
    "rename_keys",
    "save_safetensors",
    "summarise_keys",
]

_T = TypeVar("_T")
_AUTO_KEY = "state_dict"
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_StrPath = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not have the expected structure."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references code or types that weights-only loading refuses to execute."""


class CheckpointMismatchError(CheckpointError):
    """A strict `load_into` found missing, unexpected or wrongly shaped keys; see ``report``."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(f"checkpoint does not match the model:\n{report}")
        self.report = report


def summarise_keys(keys: Collection[Any], limit: int = 5) -> str:
    """``"a, b, c, d, e and 7 more"``: the first ``limit`` of ``keys`` (sorted), then a count.

    Returns the summary (empty for no keys); raises nothing.
    """
    names = sorted(str(key) for key in keys)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


@dataclass(frozen=True)
class RenameRule:
    """Rewrite checkpoint keys with ``re.sub(pattern, replacement, key)``."""

    pattern: str
    replacement: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"invalid rename pattern {self.pattern!r}: {exc}") from exc
        object.__setattr__(self, "_regex", regex)

    def apply(self, key: str) -> str:
        """The key after this rule (unchanged when the pattern does not match)."""
        return self._regex.sub(self.replacement, key)


@dataclass(frozen=True)
class LoadReport:
    """What `load_into` did: keys missing from / unexpected in the checkpoint, shape mismatches."""

    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    shape_mismatches: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    """(key, checkpoint shape, model shape) for each key present in both with different shapes."""
    loaded: int = 0
    ignored_keys: tuple[str, ...] = ()
    """Checkpoint keys dropped by ``ignore`` patterns (original, un-renamed names)."""
    renamed: tuple[tuple[str, str], ...] = ()
    """(checkpoint key, model key) for every key the rename rules changed."""

    @property
    def ok(self) -> bool:
        """True when nothing was missing, unexpected or mismatched."""
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors"]
        if self.renamed:
            lines.append(f"renamed {len(self.renamed)} keys")
        if self.ignored_keys:
            lines.append(f"ignored {len(self.ignored_keys)} checkpoint keys")
        sections = (
            ("missing from checkpoint", list(self.missing_keys)),
            ("unexpected in checkpoint", list(self.unexpected_keys)),
            (
                "shape mismatches (checkpoint vs model)",
                [f"{k}: {tuple(c)} vs {tuple(m)}" for k, c, m in self.shape_mismatches],
            ),
        )
        for title, items in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {item}" for item in items)
        return "\n".join(lines)


def load_state_dict(
    path: _StrPath,
    *,
    map_location: str | torch.device = "cpu",
    key: str | None = None,
    allow_non_tensor: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a flat name-to-tensor dict from a ``.safetensors`` file or a weights-only pickle.

    ``key`` selects a nested dict (e.g. ``"model"``, ``"module"``); with ``key=None`` and no tensors
    at the top level, a ``"state_dict"`` entry (Lightning's layout) is used. Non-tensor values
    raise `CheckpointError` unless ``allow_non_tensor``, which drops them with a warning.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", str(path))
    if file.is_dir():
        raise IsADirectoryError(errno.EISDIR, "checkpoint path is a directory", str(path))
    loaded = _read(file, map_location)
    selected = _select(loaded, key, file)
    return _only_tensors(selected, file, allow_non_tensor)


def _read(file: Path, map_location: str | torch.device) -> object:
    """The raw object stored in ``file``, read without executing pickled code."""
    if file.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(file, device=str(torch.device(map_location)))
        except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
            raise CheckpointError(f"cannot read safetensors file {str(file)!r}: {exc}") from exc
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(str(exc))
        raise UnsafeCheckpointError(
            f"refused to load {str(file)!r}: weights-only loading rejected its pickle ({reason}). "
            "Only plain tensors and containers are accepted; convert trusted files to "
            "safetensors, or allowlist their types with torch.serialization.safe_globals."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # corrupt files surface as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(
            f"cannot read checkpoint {str(file)!r}: not a readable torch file "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _refusal_reason(message: str) -> str:
    """The useful line of torch's weights-only refusal message (the global or opcode refused)."""
    refused = _REFUSED_GLOBAL.search(message)
    if refused:
        return f"it references {refused.group(1)}"
    _, marker, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return lines[0] if marker and lines else "see the chained error"


def _select(loaded: object, key: str | None, file: Path) -> Mapping[object, object]:
    """The dict holding the tensors: ``loaded[key]``, Lightning's ``state_dict``, or the top level."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds a {type(loaded).__name__}, not a dict of tensors"
        )
    top_keys = sorted(map(str, loaded))
    if key is None:
        if not loaded or any(isinstance(value, torch.Tensor) for value in loaded.values()):
            return loaded
        if _AUTO_KEY not in loaded:
            raise CheckpointError(
                f"checkpoint {str(file)!r} has no tensors at the top level; "
                f"select the nested dict with key= (top-level keys: {top_keys})"
            )
        key = _AUTO_KEY
    if key not in loaded:
        raise CheckpointError(
            f"checkpoint {str(file)!r} has no key {key!r}; top-level keys: {top_keys}"
        )
    nested = loaded[key]
    if not isinstance(nested, Mapping):
        raise CheckpointError(
            f"checkpoint {str(file)!r}: entry {key!r} is a {type(nested).__name__}, not a dict"
        )
    return nested


def _only_tensors(
    selected: Mapping[object, object], file: Path, allow_non_tensor: bool
) -> dict[str, torch.Tensor]:
    """Keep string-keyed tensors; other entries are an error, or dropped with a warning."""
    tensors: dict[str, torch.Tensor] = {}
    others: list[str] = []
    for name, value in selected.items():
        if isinstance(name, str) and isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            others.append(f"{name!r} ({type(value).__name__})")
    if others and not allow_non_tensor:
        raise CheckpointError(
            f"checkpoint {str(file)!r} has non-tensor entries: {', '.join(others)}; "
            "pass allow_non_tensor=True to drop them"
        )
    if others:
        warnings.warn(
            f"checkpoint {str(file)!r}: dropped non-tensor entries {', '.join(others)}",
            UserWarning,
            stacklevel=3,
        )
    return tensors


def _as_rules(rules: Sequence[RenameRule | tuple[str, str]]) -> list[RenameRule]:
    """Normalise ``(pattern, replacement)`` pairs to `RenameRule` objects."""
    return [rule if isinstance(rule, RenameRule) else RenameRule(*rule) for rule in rules]


def rename_keys(
    state_dict: Mapping[str, _T], rules: Sequence[RenameRule | tuple[str, str]]
) -> dict[str, _T]:
    """Apply every rule in order to each key; raise `CheckpointError` if two keys collide."""
    mapping = _rename_map(state_dict, _as_rules(rules))
    return {new: state_dict[old] for old, new in mapping.items()}


def _rename_map(keys: Iterable[str], rules: Sequence[RenameRule]) -> dict[str, str]:
    """Old key to new key, checking that no two keys end up with the same name."""
    mapping: dict[str, str] = {}
    origin: dict[str, str] = {}
    for old in keys:
        new = old
        for rule in rules:
            new = rule.apply(new)
        if new in origin:
            raise CheckpointError(f"rename rules map both {origin[new]!r} and {old!r} to {new!r}")
        origin[new] = old
        mapping[old] = new
    return mapping


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    rules: Sequence[RenameRule | tuple[str, str]] = (),
    strict: bool = True,
    ignore: Sequence[str] = (),
) -> LoadReport:
    """Rename, compare with ``model.state_dict()`` and load the tensors whose names and shapes match.

    ``ignore`` holds regexes (``re.search``) of keys to leave out on both sides: matching checkpoint
    keys (before or after renaming) are dropped and matching model keys are not reported missing.
    Tensors are cast to the model's dtype. In strict mode any problem raises
    `CheckpointMismatchError` before the model is touched; otherwise the matches are loaded.
    """
    patterns = [re.compile(pattern) for pattern in ignore]

    def ignored(name: str) -> bool:
        return any(pattern.search(name) for pattern in patterns)

    dropped = [name for name in state_dict if ignored(name)]
    mapping = _rename_map((name for name in state_dict if not ignored(name)), _as_rules(rules))
    dropped += [old for old, new in mapping.items() if ignored(new)]
    mapping = {old: new for old, new in mapping.items() if not ignored(new)}
    incoming = {new: state_dict[old] for old, new in mapping.items()}

    targets = model.state_dict()
    mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    matching: dict[str, torch.Tensor] = {}
    for name, tensor in incoming.items():
        if name not in targets:
            continue
        target = targets[name]
        if tensor.shape != target.shape:
            mismatches.append((name, tuple(tensor.shape), tuple(target.shape)))
        else:
            matching[name] = tensor.to(dtype=target.dtype)
    report = LoadReport(
        missing_keys=tuple(k for k in targets if k not in incoming and not ignored(k)),
        unexpected_keys=tuple(k for k in incoming if k not in targets),
        shape_mismatches=tuple(mismatches),
        loaded=len(matching),
        ignored_keys=tuple(dropped),
        renamed=tuple((old, new) for old, new in mapping.items() if old != new),
    )
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    with torch.no_grad():
        model.load_state_dict(matching, strict=False)
    return report


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: _StrPath,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``state_dict`` as safetensors, making tensors contiguous and un-sharing tied storage.

    safetensors refuses tensors that share memory (tied weights) or are non-contiguous views; this
    saves each such tensor as its own copy. The file is written atomically
    (`vl_core.files.atomic_save`: temporary file beside it, fsync, rename).
    """
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, tensor in state_dict.items():
        data = tensor.detach()
        storage = (str(data.device), data.untyped_storage().data_ptr())
        if storage in seen_storage or data.numel() == 0:
            data = data.clone()
        elif data.untyped_storage().nbytes() != data.numel() * data.element_size():
            data = data.clone()  # a view into a larger buffer: save only its own elements
        seen_storage.add(storage)
        prepared[name] = data.contiguous()
    atomic_save(
        path,
        lambda temporary: safetensors.torch.save_file(
            prepared, temporary, metadata=dict(metadata) if metadata is not None else None
        ),
    )
