"""clip4dm: find the words of a caption that do not match the image, from CLIP alone.

Implements CLIP4DM (Nam et al., AAAI 2025) and its F-CLIPScore.
"""

from __future__ import annotations

from clip4dm.alignment import Word, WordTokens, align_words, is_punctuation, split_words
from clip4dm.detector import (
    CLIP4DM,
    DEFAULT_EPSILON,
    DEFAULT_LAYERS,
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    Relevance,
)
from clip4dm.results import Detection, WordScore
from clip4dm.scores import Mode, clip_score, f_clip_score, ref_clip_score, select_misaligned

__version__ = "0.1.0"

__all__ = [
    "CLIP4DM",
    "DEFAULT_EPSILON",
    "DEFAULT_LAYERS",
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "Detection",
    "Mode",
    "Relevance",
    "Word",
    "WordScore",
    "WordTokens",
    "__version__",
    "align_words",
    "clip_score",
    "f_clip_score",
    "is_punctuation",
    "ref_clip_score",
    "select_misaligned",
    "split_words",
]
