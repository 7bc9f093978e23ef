"""Turning hub-client failures into one clear, actionable error."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ModelNotAvailableError(OSError):
    """Weights for a named model cannot be had here (offline, not cached, or not found)."""

    def __init__(self, name: str, reason: str, hint: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"cannot load model {name!r}: {reason}. {hint}")


class WrongModelError(ValueError):
    """The named model is of another kind than the one asked for (e.g. an EGTR given where a CLIP
    is needed), as its configuration says."""


def looks_like_path(name: str) -> bool:
    """True for names that can only be filesystem paths, never hub ids (``namespace/name``)."""
    return name.startswith(("/", ".", "~", "\\")) or name.count("/") > 1 or ":" in name


def is_offline() -> bool:
    """True when the HF hub is switched off by the usual environment variables."""
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(var, "").strip().lower() in truthy
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@contextmanager
def _hub_client_offline() -> Iterator[None]:
    """Make ``huggingface_hub`` honour an offline switch set after it was imported.

    The hub client reads ``HF_HUB_OFFLINE`` once, at import; open_clip and timm call it without a
    ``local_files_only`` flag. Without this, setting the variable later (a test, a notebook) would
    leave them retrying the network for a minute instead of failing at once.
    """
    if not is_offline():
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def hub_errors(name: str, hint: str) -> Iterator[None]:
    """Re-raise network/cache errors from hub clients as :class:`ModelNotAvailableError`.

    Also puts the hub client offline for the duration when the environment asks for it.
    """
    try:
        with _hub_client_offline():
            yield
    except ModelNotAvailableError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # hub clients raise subclasses of these
        if not _looks_like_availability_error(exc):
            raise
        reason = "not found locally and it could not be downloaded"
        if is_offline():
            reason += " (HF_HUB_OFFLINE is set)"
        raise ModelNotAvailableError(name, reason, hint) from exc


_MARKERS = (
    "offline",
    "connect",
    "resolve",
    "not found",
    "does not appear to have",
    "couldn't find",
    "can't load",
    "cannot find",
    "localentrynotfound",
    "repositorynotfound",
    "is not a local folder",
    "no such file",
    "hub",
    "max retries",
    "timed out",
)


def _looks_like_availability_error(exc: BaseException) -> bool:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    return any(marker in text for marker in _MARKERS)


# -- announcing a download ------------------------------------------------------------------------

WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
"""The weight files a hub repository of a model may hold (one is enough)."""


def is_cached(
    repo_id: str,
    *,
    files: Sequence[str] = ("config.json",),
    weights: Sequence[str] = WEIGHT_FILES,
    cache_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``: all of ``files`` and at least one of
    ``weights`` (an empty ``weights`` asks for ``files`` only). Reads the cache only, no network.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False

    def cached(name: str) -> bool:
        try:
            where = None if cache_dir is None else Path(cache_dir)
            found = try_to_load_from_cache(repo_id, name, cache_dir=where)
        except ValueError:  # not a valid repository id
            return False
        return isinstance(found, str)

    return all(cached(f) for f in files) and (not weights or any(cached(w) for w in weights))


def download_notice(
    repo_id: str,
    *,
    prog: str,
    size: str | None = None,
    local: str = "pass --model DIR to use local files",
    files: Sequence[str] = ("config.json",),
    cache_dir: str | os.PathLike[str] | None = None,
) -> str | None:
    """The line to print before ``repo_id`` is downloaded from the Hugging Face Hub, or ``None``
    when nothing will be downloaded (offline, a local path, or already in the local cache).

    ``size`` (e.g. ``"605 MB"``) is shown where known; ``local`` says how to use local files.
    """
    if is_offline() or looks_like_path(repo_id) or Path(repo_id).expanduser().exists():
        return None
    if is_cached(repo_id, files=files, cache_dir=cache_dir):
        return None
    about = f" (about {size})" if size else ""
    return (
        f"{prog}: downloading {repo_id}{about} from the Hugging Face Hub; "
        f"set HF_HUB_OFFLINE=1 or {local}"
    )


# -- a local snapshot of a hub model --------------------------------------------------------------

MODEL_FILE_PATTERNS: tuple[str, ...] = ("config.json", "*.safetensors", "*.safetensors.index.json")
"""What :func:`download_snapshot` fetches by default: the configuration and safetensors weights
(never pickled ``.bin`` weights)."""


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face Hub cache folder in use; returns ``cache_dir`` when given, else
    ``$HF_HUB_CACHE`` as set now (the hub client reads it only once, at import), else the hub
    client's default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get("HF_HUB_CACHE", "").strip()
    if from_env:
        return Path(from_env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def download_snapshot(
    repo_id: str,
    *,
    prog: str,
    hint: str,
    name: str | None = None,
    allow_patterns: Sequence[str] = MODEL_FILE_PATTERNS,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local: str = "pass --model DIR to use local files",
) -> Path:
    """The local folder of a snapshot of the Hub model repository ``repo_id`` (only the files
    matching ``allow_patterns``), downloaded into the Hugging Face cache when it is not there.

    Offline (``HF_HUB_OFFLINE=1``) nothing is fetched and the cache alone answers, at once.
    Online, a download of files not yet cached is announced first, in one line on stderr, with its
    size where the Hub says it (:func:`download_notice`; ``local`` says how to use local files).
    ``name`` is how the model is named in messages (default ``repo_id``; e.g. ``hf:org/name``).

    Raises :class:`ModelNotAvailableError` (an ``OSError``) when the snapshot cannot be had: not
    cached while offline, no such repository or revision, an invalid id, a network failure. The
    message is one line naming the model, what went wrong, and then ``hint`` (how to point at a
    local copy instead).
    """
    from huggingface_hub import snapshot_download

    label = name or repo_id
    cache = hub_cache_dir(cache_dir)
    offline = is_offline()
    patterns = list(allow_patterns)
    try:
        with _hub_client_offline():
            if not offline and not is_cached(repo_id, cache_dir=cache):
                size = _download_size(repo_id, patterns, revision, token, cache)
                notice = download_notice(
                    repo_id, prog=prog, size=size, local=local, cache_dir=cache
                )
                if notice is not None:
                    print(notice, file=sys.stderr, flush=True)
            folder = snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                cache_dir=cache,
                allow_patterns=patterns,
                local_files_only=offline,
            )
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(label, _snapshot_problem(exc, repo_id, cache), hint) from exc
    return Path(str(folder))


def _download_size(
    repo_id: str,
    patterns: list[str],
    revision: str | None,
    token: str | bool | None,
    cache: Path,
) -> str | None:
    """``"12.3 MB"``: what a download of ``repo_id`` would fetch, or ``None`` when unknown."""
    from huggingface_hub import snapshot_download

    try:
        planned: Any = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache,
            allow_patterns=patterns,
            dry_run=True,
        )
        sizes = [
            int(item.file_size)
            for item in planned
            if getattr(item, "will_download", True) and getattr(item, "file_size", None)
        ]
    except (OSError, ValueError, TypeError):  # the download itself reports what is wrong
        return None
    return format_size(sum(sizes)) if sizes else None


def format_size(size: int) -> str:
    """``"605 MB"``-style text for ``size`` bytes (decimal units, as the Hub shows them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _snapshot_problem(exc: BaseException, repo_id: str, cache: Path) -> str:
    """What went wrong, in a few words, for :class:`ModelNotAvailableError`."""
    from huggingface_hub import errors

    def kind(name: str) -> bool:  # by name: not every version of the hub client has them all
        found = getattr(errors, name, None)
        return isinstance(found, type) and isinstance(exc, found)

    if kind("HFValidationError"):
        return f"{repo_id!r} is not a valid Hugging Face Hub id (expected ORG/NAME)"
    if kind("IncompleteSnapshotError"):
        return f"its copy in the Hugging Face cache ({cache}) is incomplete"
    if kind("LocalEntryNotFoundError") and is_offline():
        return f"it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set"
    if kind("RevisionNotFoundError"):
        return "the Hugging Face Hub has no such revision of it"
    if kind("RepositoryNotFoundError"):
        return (
            "the Hugging Face Hub has no such model, or it is private "
            "(log in with `hf auth login` for a private one)"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"it could not be downloaded ({type(exc).__name__}: {first[:200]})"
