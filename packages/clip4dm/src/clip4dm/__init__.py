"""clip4dm: find the words of a caption that do not match the image, from CLIP alone."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
