"""timm feature extractors (e.g. the ResNet-50 of a detector), built offline by default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from vl_core.hub import hub_errors


@dataclass
class TimmBackbone:
    """A timm model in ``features_only`` mode with its channel counts and strides."""

    name: str
    model: nn.Module
    channels: tuple[int, ...]
    reductions: tuple[int, ...]


def load_timm(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> TimmBackbone:
    """Create ``timm`` model ``name`` as a multi-scale feature extractor.

    ``pretrained=False`` (default) never touches the network; ``checkpoint`` loads local weights
    (safetensors or a weights-only torch file) through timm's own loader.
    """
    import timm

    hint = "pass checkpoint=/path/to/weights (safetensors) or pretrained=False"
    with hub_errors(f"timm:{name}", hint):
        model = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            out_indices=tuple(out_indices),
            checkpoint_path=str(checkpoint) if checkpoint else "",
            **kwargs,
        )
    info = cast(Any, model).feature_info
    return TimmBackbone(
        name=name,
        model=model.to(device),
        channels=tuple(int(c) for c in info.channels()),
        reductions=tuple(int(r) for r in info.reduction()),
    )
