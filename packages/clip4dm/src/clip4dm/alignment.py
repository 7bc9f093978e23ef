"""Words of a caption ↔ the BPE tokens that cover them, by byte offsets.

Words are the whitespace-separated chunks of the text, with leading and trailing runs of
characters other than letters and digits (punctuation, symbols, emoji) split off as words of their
own ("coke." → "coke", "."; '"hi!"' → '"', "hi", '!"'; "cat🐱" → "cat", "🐱"). Inner punctuation
stays ("T-shirt", "don't", "3.5"). Only punctuation-only words (`is_punctuation`) are never
selected as misaligned; a symbol or an emoji is a word like any other. A word gets every token whose bytes overlap
the word's bytes in the tokenizer's normalized text, so "...", '."', hyphens, digits and non-ASCII
characters are all attributed exactly (the reference's word-by-word cursor drifts on those).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vl_core.tokens import ClipTokenizer

_CHUNK = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    """A word of the text with its character span ``[start, end)``."""

    text: str
    start: int
    end: int


def _is_punct(ch: str) -> bool:
    """Whether the splitter separates ``ch`` from a word's edge (anything but letters and digits)."""
    return not ch.isalnum()


def is_punctuation(word: str) -> bool:
    """Whether ``word`` is punctuation only (e.g. ".", "...", '."'), never a misaligned word.

    Returns True when the word has a punctuation character (Unicode category P*) and no letter,
    number or symbol (L*, N*, S*): an emoji (So), "$" or "+" is a word and can be flagged.
    """
    categories = [unicodedata.category(ch)[0] for ch in word]
    return "P" in categories and not any(c in "LNS" for c in categories)


def split_words(text: str) -> list[Word]:
    """The words of ``text`` with their spans, in order (see the module docstring)."""
    words: list[Word] = []
    for match in _CHUNK.finditer(text):
        chunk, base = match.group(), match.start()
        lead = 0
        while lead < len(chunk) and _is_punct(chunk[lead]):
            lead += 1
        if lead == len(chunk):
            words.append(Word(chunk, base, base + len(chunk)))
            continue
        trail = len(chunk)
        while trail > lead and _is_punct(chunk[trail - 1]):
            trail -= 1
        if lead:
            words.append(Word(chunk[:lead], base, base + lead))
        words.append(Word(chunk[lead:trail], base + lead, base + trail))
        if trail < len(chunk):
            words.append(Word(chunk[trail:], base + trail, base + len(chunk)))
    return words


def _normalized_bytes(tokenizer: ClipTokenizer, text: str) -> bytes:
    return "".join(tokenizer.normalize(text).split()).encode("utf-8")


@dataclass(frozen=True)
class WordTokens:
    """Indices (into the content tokens) covering a word; ``complete`` is False when the
    context-length truncation cut some or all of the word's tokens."""

    tokens: list[int]
    complete: bool


def align_words(
    tokenizer: ClipTokenizer, words: Sequence[Word], token_ids: Sequence[int]
) -> list[WordTokens]:
    """For each word, the tokens of ``token_ids`` covering it (one `WordTokens` per word).

    ``token_ids`` are the content tokens of the text the words come from (no start/end token),
    possibly truncated: words past the truncation are marked incomplete. Raises ``KeyError`` for
    a token id the tokenizer does not know.
    """
    token_spans: list[tuple[int, int]] = []
    pos = 0
    for token_id in token_ids:
        size = len(tokenizer.token_bytes(token_id))
        token_spans.append((pos, pos + size))
        pos += size
    word_bytes = [_normalized_bytes(tokenizer, w.text) for w in words]
    word_spans: list[tuple[int, int]] = []
    pos = 0
    for chunk in word_bytes:
        word_spans.append((pos, pos + len(chunk)))
        pos += len(chunk)
    joined_words = b"".join(word_bytes)
    joined_tokens = b"".join(tokenizer.token_bytes(t) for t in token_ids)
    if not joined_words.startswith(joined_tokens):
        # Normalization changed the text differently word-by-word than as a whole (rare:
        # ftfy/NFC edge cases). Map word byte spans onto token bytes through the longest matches.
        word_spans = _remap(word_spans, joined_words, joined_tokens)
    covered = len(joined_tokens)
    return [
        WordTokens(
            tokens=[i for i, (t0, t1) in enumerate(token_spans) if t0 < end and start < t1],
            complete=end <= covered,
        )
        for start, end in word_spans
    ]


def _remap(spans: list[tuple[int, int]], source: bytes, target: bytes) -> list[tuple[int, int]]:
    matcher = difflib.SequenceMatcher(a=source, b=target, autojunk=False)
    mapping = [-1] * (len(source) + 1)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapping[block.a + k] = block.b + k
    mapping[len(source)] = len(target)
    # fill gaps with the next known position so every byte maps somewhere monotonic
    nxt = len(target)
    for i in range(len(source), -1, -1):
        if mapping[i] == -1:
            mapping[i] = nxt
        nxt = mapping[i]
    return [(mapping[s], mapping[e] if e > s else mapping[s]) for s, e in spans]
