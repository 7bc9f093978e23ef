"""Device and dtype selection: ``"auto"`` means CUDA when present, bf16/fp16 there, fp32 on CPU."""

from __future__ import annotations

from typing import Literal

import torch

DeviceLike = str | torch.device
DTypeLike = Literal["auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"] | torch.dtype

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """The ``torch.device`` for ``device``: ``"auto"`` → ``cuda`` if available else ``cpu``;
    anything else is passed to ``torch.device``.

    Raises ``ValueError`` for an unknown device, or a CUDA device when CUDA is not available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: DTypeLike | str = "auto", device: DeviceLike = "cpu") -> torch.dtype:
    """The ``torch.dtype`` for ``dtype``: ``"auto"`` → bf16 on CUDA devices that support it, else
    fp16 on CUDA, fp32 on CPU. Raises ``ValueError`` for an unknown name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = resolve_device(device)
        if dev.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use 'auto', one of {sorted(_DTYPES)} or a torch.dtype"
        ) from None
