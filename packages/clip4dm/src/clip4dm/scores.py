"""Caption-level scores (CLIPScore, F-CLIPScore, RefCLIPScore) and misaligned-word selection."""

from __future__ import annotations

from collections.abc import Sequence

from clip4dm.alignment import is_punctuation
from clip4dm.defaults import MODES, Mode
from clip4dm.results import WordScore

__all__ = [
    "CLIP_SCORE_WEIGHT",
    "MODES",
    "Mode",
    "clip_score",
    "f_clip_score",
    "ref_clip_score",
    "select_misaligned",
]

CLIP_SCORE_WEIGHT = 2.5


def clip_score(cosine: float) -> float:
    """CLIPScore (Hessel et al. 2021): ``2.5 · max(cos, 0)``."""
    return CLIP_SCORE_WEIGHT * max(cosine, 0.0)


def f_clip_score(negative_sum: float, cosine: float) -> float:
    """F-CLIPScore as the CLIP4DM reference code defines it: ``negative_sum · (1 − max(cos, 0))``.

    ≤ 0 in threshold mode; 0 means no misaligned word; more negative means more misaligned.
    """
    return negative_sum * (1.0 - max(cosine, 0.0))


def ref_clip_score(cosine: float, reference_cosines: Sequence[float]) -> float:
    """RefCLIPScore: harmonic mean of CLIPScore and ``2.5 · max_r max(cos(text, ref_r), 0)``.

    Uses ALL references (the reference code stops after the first one by mistake). Raises
    ``ValueError`` when ``reference_cosines`` is empty.
    """
    if not reference_cosines:
        raise ValueError("RefCLIPScore needs at least one reference caption")
    a = clip_score(cosine)
    b = CLIP_SCORE_WEIGHT * max(max(reference_cosines), 0.0)
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def select_misaligned(
    words: Sequence[WordScore], mode: Mode, epsilon: float
) -> tuple[list[WordScore], float]:
    """The misaligned words and their ``negative_sum`` for ``mode``.

    ``most_negative``: the single lowest-scoring word (its score is the sum). ``threshold``: every
    non-punctuation word with score strictly below ``epsilon`` (sum 0.0 when there is none).
    Returns ``(selected words, negative_sum)``; raises ``ValueError`` for an unknown mode.
    """
    if mode == "most_negative":
        if not words:
            return [], 0.0
        lowest = min(words, key=lambda w: w.score)
        return [lowest], lowest.score
    if mode == "threshold":
        chosen = [w for w in words if not is_punctuation(w.word) and w.score < epsilon]
        return chosen, float(sum(w.score for w in chosen))
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
