"""The method's settings, their choices and defaults, in one place.

This module imports nothing heavy (no torch), so the command line can build its ``--help`` and
its argument choices from the same constants the code uses.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_LAYERS",
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "MODES",
    "Mode",
]

Mode = Literal["threshold", "most_negative"]
"""How misaligned words are selected (see `clip4dm.select_misaligned`)."""

MODES: tuple[Mode, ...] = ("threshold", "most_negative")
"""Every `Mode`, the default first."""

DEFAULT_MODEL = "hf:openai/clip-vit-base-patch32"
"""The model used when none is named: OpenAI's ViT-B/32 from the Hugging Face Hub."""

DEFAULT_TEMPLATE = "A photo depicts "
"""Text encoded before the caption (the CLIPScore prompt); its words are scored but not reported."""

DEFAULT_EPSILON = -5e-5
"""Threshold mode selects the words scoring strictly below this (calibrated on the plain cosine)."""

DEFAULT_LAYERS = 3
"""Number of last text-encoder layers whose attention is attributed."""
