"""One factory over a small registry of CLIP families: ``hf:`` and ``openclip:``.

Only the families the packages use are registered (egtr's ResNet comes from transformers'
``use_timm_backbone`` inside ``DeformableDetrModel``, not from this factory); `register_backbone`
adds others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vl_core.clip import ClipBackbone
from vl_core.devices import DeviceLike, DTypeLike, resolve_device, resolve_dtype

Backbone = ClipBackbone
Loader = Callable[[str, torch.device, torch.dtype], Backbone]

_REGISTRY: dict[str, Loader] = {}


def register_backbone(prefix: str, loader: Loader) -> None:
    """Make ``prefix:NAME`` resolve to ``loader(NAME, device, dtype)``.

    Raises ``ValueError`` when ``prefix`` is not an identifier.
    """
    if not prefix.isidentifier():
        raise ValueError(f"backbone prefix must be an identifier, got {prefix!r}")
    _REGISTRY[prefix] = loader


def available_families() -> list[str]:
    """Registered prefixes, e.g. ``['hf', 'openclip']``."""
    return sorted(_REGISTRY)


def split_name(name: str) -> tuple[str, str]:
    """``(family, rest)`` of a model name: ``"hf:openai/clip"`` → ``("hf", "openai/clip")``; a bare
    local dir with config.json → hf, with open_clip_config.json → openclip.

    Raises ``ValueError`` for an unknown family or a name that is neither prefixed nor a model
    directory.
    """
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _REGISTRY:
        return prefix, rest
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", name
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        return "openclip", name
    if path.is_dir():
        problem = f"directory {name!r} holds neither config.json (HF) nor open_clip_config.json"
    elif sep and prefix.isidentifier():
        problem = f"unknown model family {prefix!r} in {name!r}"
    else:
        problem = f"unknown model {name!r} (neither family-prefixed nor an existing directory)"
    raise ValueError(
        f"{problem}: use one of {[p + ':...' for p in available_families()]} "
        "or a local model directory"
    )


def load_backbone(
    name: str, *, device: DeviceLike = "auto", dtype: DTypeLike | str = "auto"
) -> Backbone:
    """Load any registered backbone by ``family:name``; returns the `Backbone`.

    Raises ``ValueError`` for a bad name, device or dtype, and `ModelNotAvailableError` (an
    ``OSError``) when the weights cannot be had here.
    """
    family, rest = split_name(name)
    dev = resolve_device(device)
    return _REGISTRY[family](rest, dev, resolve_dtype(dtype, dev))


def load_clip(
    name: str, *, device: DeviceLike = "auto", dtype: DTypeLike | str = "auto"
) -> ClipBackbone:
    """Load a CLIP model (``hf:...``, ``openclip:...`` or a local directory); returns its
    `ClipBackbone`.

    Raises what `load_backbone` raises, and ``TypeError`` when the name is not a CLIP model.
    """
    backbone = load_backbone(name, device=device, dtype=dtype)
    if not isinstance(backbone, ClipBackbone):
        raise TypeError(f"{name!r} is not a CLIP model (got {type(backbone).__name__})")
    return backbone


def _load_hf(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    from vl_core._hf_clip import HFClipBackbone

    return HFClipBackbone.load(name, device, dtype)


def _load_openclip(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    from vl_core._openclip import OpenClipBackbone

    return OpenClipBackbone.load(name, device, dtype)


register_backbone("hf", _load_hf)
register_backbone("openclip", _load_openclip)
