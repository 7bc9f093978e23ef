"""Typed results of a detection: per-word scores and the caption-level scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class WordScore:
    """One caption word, its position among the caption's words (0-based), and its score."""

    word: str
    index: int
    score: float


@dataclass(frozen=True)
class Detection:
    """Result of CLIP4DM for one (image, caption) pair.

    ``words`` excludes the template words; ``misaligned`` are the selected words (mode-dependent);
    ``negative_sum`` is the sum of the selected words' scores (most_negative: the lowest score);
    ``clip_score`` = 2.5·max(cos, 0); ``f_clip_score`` = negative_sum·(1 − max(cos, 0));
    ``ref_clip_score`` is set when reference captions were given.
    """

    caption: str
    words: list[WordScore]
    misaligned: list[WordScore]
    negative_sum: float
    cosine: float
    clip_score: float
    f_clip_score: float
    mode: str
    truncated: bool = False
    unscored_words: list[str] = field(default_factory=list)
    ref_clip_score: float | None = None

    @property
    def misaligned_words(self) -> list[str]:
        """The selected words as plain strings."""
        return [w.word for w in self.misaligned]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (plain lists, floats, strings)."""
        return asdict(self)
