"""Words ↔ BPE tokens: hand-built cases with the real CLIP vocabulary."""

from __future__ import annotations

import pytest

from clip4dm.alignment import align_words, is_punctuation, split_words
from vl_core._openclip import OpenClipTokenizer
from vl_core.tokens import ClipTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    import open_clip

    return OpenClipTokenizer(open_clip.get_tokenizer("ViT-B-32"))


def groups_as_text(tokenizer: ClipTokenizer, text: str) -> list[tuple[str, list[str]]]:
    words = split_words(text)
    ids = tokenizer.encode(text)
    aligned = align_words(tokenizer, words, ids)
    return [
        (w.text, [tokenizer.token_bytes(ids[i]).decode("utf-8", "replace") for i in g.tokens])
        for w, g in zip(words, aligned, strict=True)
    ]


def test_split_words_separates_edge_punctuation_only() -> None:
    text = 'A "cup" of coke... T-shirt, don\'t 3.5 café."'
    assert [w.text for w in split_words(text)] == [
        "A",
        '"',
        "cup",
        '"',
        "of",
        "coke",
        "...",
        "T-shirt",
        ",",
        "don't",
        "3.5",
        "café",
        '."',
    ]
    for word in split_words(text):
        assert text[word.start : word.end] == word.text


def test_plain_caption_each_word_gets_its_own_tokens(tokenizer: ClipTokenizer) -> None:
    assert groups_as_text(tokenizer, "a dog, on the grass.") == [
        ("a", ["a"]),
        ("dog", ["dog"]),
        (",", [","]),
        ("on", ["on"]),
        ("the", ["the"]),
        ("grass", ["grass"]),
        (".", ["."]),
    ]


def test_multi_char_punctuation_tokens_stay_with_their_word(tokenizer: ClipTokenizer) -> None:
    result = dict(groups_as_text(tokenizer, 'coke... and "pepsi."'))
    assert "".join(result["..."]) == "..."
    assert "".join(result['."']) == '."'
    assert result["pepsi"] == ["pepsi"]
    assert result["coke"] == ["coke"]


def test_hyphen_apostrophe_digits_and_accents(tokenizer: ClipTokenizer) -> None:
    result = dict(groups_as_text(tokenizer, "a T-shirt, don't 3.5 café naïve"))
    assert "".join(result["T-shirt"]) == "t-shirt"
    assert len(result["T-shirt"]) >= 3  # t, -, shirt
    assert "".join(result["don't"]) == "don't"
    assert "".join(result["3.5"]) == "3.5"
    assert "".join(result["café"]) == "café"
    assert "".join(result["naïve"]) == "naïve"


def test_every_token_is_used_exactly_once_on_messy_text(tokenizer: ClipTokenizer) -> None:
    text = "«Quoted» text—with dashes... (parens) & ampersands!? 12,000 cats' toys."
    ids = tokenizer.encode(text)
    aligned = align_words(tokenizer, split_words(text), ids)
    used = sorted(i for g in aligned for i in g.tokens)
    assert used == list(range(len(ids)))
    assert all(g.complete for g in aligned)


def test_truncated_tokens_mark_words_incomplete(tokenizer: ClipTokenizer) -> None:
    text = "one two three four"
    ids = tokenizer.encode(text)[:2]
    aligned = align_words(tokenizer, split_words(text), ids)
    assert [g.complete for g in aligned] == [True, True, False, False]
    assert [g.tokens for g in aligned][2:] == [[], []]


def test_is_punctuation() -> None:
    assert is_punctuation(".")
    assert is_punctuation('..."')
    assert is_punctuation("«…»")
    assert is_punctuation("_")
    assert not is_punctuation("T-shirt")
    assert not is_punctuation("3")
    assert not is_punctuation("")


@pytest.mark.parametrize("word", ["🐱", "🐱🐶", "❤️", "$", "+", "©", "°", "🐱!"])
def test_symbols_and_emoji_are_words(word: str) -> None:
    assert not is_punctuation(word)
