"""Typed results of a detection: per-word scores and the caption-level scores.

`Detection.to_dict` is the JSON form written in every row of ``clip4dm detect --pairs`` and
``clip4dm eval``; `Detection.from_dict` reads it back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from clip4dm.defaults import MODES

__all__ = ["Detection", "WordScore"]


def _number(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    if key not in data:
        if optional:
            return None
        raise ValueError(f"missing field {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    return float(value)


def _integer(data: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    return value


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {value!r}")
    return value


@dataclass(frozen=True)
class WordScore:
    """One caption word: its text, its position among the caption's words (0-based), its score,
    and its character span ``[start, end)`` in the caption as given (the template is not counted),
    so ``caption[start:end] == word``.

    The span is ``None`` only for words built by hand without one, or read from rows written
    before the span was recorded.
    """

    word: str
    index: int
    score: float
    start: int | None = None
    end: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"word", "index", "score", "start", "end"}`` (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WordScore:
        """The `WordScore` whose `to_dict` is ``data`` (a missing span reads as ``None``).

        Raises ``ValueError`` when ``data`` is not a mapping or a field has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a word must be a JSON object, got {type(data).__name__}")
        index = _integer(data, "index")
        assert index is not None
        return cls(
            word=_text(data, "word"),
            index=index,
            score=_number(data, "score"),
            start=_integer(data, "start", optional=True),
            end=_integer(data, "end", optional=True),
        )


@dataclass(frozen=True)
class Detection:
    """Result of CLIP4DM for one (image, caption) pair.

    ``words`` excludes the template words; ``misaligned`` are the selected words (mode-dependent);
    ``negative_sum`` is the sum of the selected words' scores (most_negative: the lowest score);
    ``clip_score`` = 2.5·max(cos, 0); ``f_clip_score`` = negative_sum·(1 − max(cos, 0));
    ``truncated`` is set when words beyond the model's context got no score (``unscored_words``,
    in caption order); ``ref_clip_score`` is set when reference captions were given.
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
        """The JSON form (plain lists, floats, strings): the fields, words as `WordScore.to_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        """The `Detection` whose `to_dict` is ``data``: ``from_dict(d.to_dict()) == d``.

        Other keys (a row's ``id``, ``image``, ``error``, a benchmark's fields) are ignored.
        Raises ``ValueError`` when a field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a detection must be a JSON object, got {type(data).__name__}")
        mode = _text(data, "mode")
        if mode not in MODES:
            raise ValueError(f"'mode' must be one of {MODES}, got {mode!r}")
        words, misaligned = (data.get(key) for key in ("words", "misaligned"))
        unscored = data.get("unscored_words", [])
        if not isinstance(words, list) or not isinstance(misaligned, list):
            raise ValueError("'words' and 'misaligned' must be lists of words")
        if not isinstance(unscored, list) or not all(isinstance(w, str) for w in unscored):
            raise ValueError("'unscored_words' must be a list of strings")
        truncated = data.get("truncated", False)
        if not isinstance(truncated, bool):
            raise ValueError(f"'truncated' must be true or false, got {truncated!r}")
        return cls(
            caption=_text(data, "caption"),
            words=[WordScore.from_dict(w) for w in words],
            misaligned=[WordScore.from_dict(w) for w in misaligned],
            negative_sum=_number(data, "negative_sum"),
            cosine=_number(data, "cosine"),
            clip_score=_number(data, "clip_score"),
            f_clip_score=_number(data, "f_clip_score"),
            mode=mode,
            truncated=truncated,
            unscored_words=list(unscored),
            ref_clip_score=_number(data, "ref_clip_score", optional=True),
        )
