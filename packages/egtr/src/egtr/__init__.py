"""egtr: one-stage scene graph generation from a Deformable DETR's decoder self-attention."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
