"""clip4dm: find the words of a caption that do not match the image, from CLIP alone.

Implements CLIP4DM (Nam et al., AAAI 2025) and its F-CLIPScore. The public names below are
imported lazily, so ``import clip4dm`` (and ``clip4dm --help``) stays fast until a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vl_core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "CLIP4DM": "clip4dm.detector",
    "DEFAULT_EPSILON": "clip4dm.defaults",
    "DEFAULT_LAYERS": "clip4dm.defaults",
    "DEFAULT_MODEL": "clip4dm.defaults",
    "DEFAULT_TEMPLATE": "clip4dm.defaults",
    "Detection": "clip4dm.results",
    "Mode": "clip4dm.defaults",
    "Relevance": "clip4dm.detector",
    "Word": "clip4dm.alignment",
    "WordScore": "clip4dm.results",
    "WordTokens": "clip4dm.alignment",
    "align_words": "clip4dm.alignment",
    "clip_score": "clip4dm.scores",
    "f_clip_score": "clip4dm.scores",
    "is_punctuation": "clip4dm.alignment",
    "ref_clip_score": "clip4dm.scores",
    "select_misaligned": "clip4dm.scores",
    "split_words": "clip4dm.alignment",
}

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

if TYPE_CHECKING:
    from clip4dm.alignment import Word, WordTokens, align_words, is_punctuation, split_words
    from clip4dm.defaults import (
        DEFAULT_EPSILON,
        DEFAULT_LAYERS,
        DEFAULT_MODEL,
        DEFAULT_TEMPLATE,
        Mode,
    )
    from clip4dm.detector import CLIP4DM, Relevance
    from clip4dm.results import Detection, WordScore
    from clip4dm.scores import clip_score, f_clip_score, ref_clip_score, select_misaligned


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
