"""Turning hub-client failures into one clear, actionable error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class ModelNotAvailableError(OSError):
    """Weights for a named model cannot be had here (offline, not cached, or not found)."""

    def __init__(self, name: str, reason: str, hint: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"cannot load model {name!r}: {reason}. {hint}")


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
