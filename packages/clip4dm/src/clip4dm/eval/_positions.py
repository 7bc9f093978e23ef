"""Benchmark word positions → clip4dm word positions.

Data sets count a caption's words by whitespace ("horse." is word 5 of "A man riding a red
horse."); clip4dm splits leading and trailing punctuation off as words of their own
(`clip4dm.alignment.split_words`), so its `WordScore.index` can differ. These helpers translate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from clip4dm.alignment import is_punctuation, split_words

__all__ = ["chunk_positions", "chunk_word"]

_CHUNK = re.compile(r"\S+")


def chunk_word(caption: str, chunk: int) -> str:
    """The whitespace-separated word ``chunk`` (0-based) of ``caption`` without its leading and
    trailing punctuation. Raises ``IndexError`` when ``caption`` has no such word."""
    chunks = _CHUNK.findall(caption)
    if not 0 <= chunk < len(chunks):
        raise IndexError(f"word index {chunk} is outside the caption's {len(chunks)} words")
    words = [w.text for w in split_words(chunks[chunk]) if not is_punctuation(w.text)]
    return words[0] if words else chunks[chunk]


def chunk_positions(caption: str, chunks: Iterable[int]) -> tuple[int, ...]:
    """clip4dm's word positions (`WordScore.index`, counted from the caption's first word) of
    the non-punctuation words in the whitespace-separated words ``chunks`` of ``caption``, sorted.

    Raises ``IndexError`` for a chunk index outside the caption.
    """
    spans = [m.span() for m in _CHUNK.finditer(caption)]
    wanted = set(chunks)
    for chunk in wanted:
        if not 0 <= chunk < len(spans):
            raise IndexError(f"word index {chunk} is outside the caption's {len(spans)} words")
    starts = {spans[k][0]: k for k in range(len(spans))}
    positions: list[int] = []
    chunk = -1
    for index, word in enumerate(split_words(caption)):
        chunk = starts.get(word.start, chunk)
        if chunk in wanted and not is_punctuation(word.text):
            positions.append(index)
    return tuple(positions)
