"""Caption-level scores against hand-computed values."""

from __future__ import annotations

import pytest

from clip4dm import WordScore, clip_score, f_clip_score, ref_clip_score, select_misaligned


def test_clip_score_clamps_negative_cosine() -> None:
    assert clip_score(0.3) == pytest.approx(0.75)
    assert clip_score(-0.2) == 0.0


def test_f_clip_score_definition() -> None:
    assert f_clip_score(-2e-4, 0.3) == pytest.approx(-2e-4 * 0.7)
    assert f_clip_score(-2e-4, -0.1) == pytest.approx(-2e-4)
    assert f_clip_score(0.0, 0.5) == 0.0


def test_ref_clip_score_uses_all_references() -> None:
    # candidate cosine 0.3 -> 0.75; best reference cosine is the LAST one (0.4 -> 1.0)
    expected = 2 * 0.75 * 1.0 / (0.75 + 1.0)
    assert ref_clip_score(0.3, [0.1, -0.5, 0.4]) == pytest.approx(expected)
    assert ref_clip_score(-0.1, [-0.2]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        ref_clip_score(0.3, [])


WORDS = [
    WordScore("a", 0, -1e-4),
    WordScore("red", 1, -3e-5),
    WordScore("cat", 2, -6e-5),
    WordScore(".", 3, -9e-4),
]


def test_threshold_mode_strictly_below_epsilon_without_punctuation() -> None:
    chosen, total = select_misaligned(WORDS, "threshold", -5e-5)
    assert [w.word for w in chosen] == ["a", "cat"]
    assert total == pytest.approx(-1.6e-4)
    none, zero = select_misaligned(WORDS, "threshold", -1.0)
    assert none == []
    assert zero == 0.0
    boundary, _ = select_misaligned([WordScore("x", 0, -5e-5)], "threshold", -5e-5)
    assert boundary == []


def test_an_emoji_word_can_be_misaligned() -> None:
    words = [WordScore("a", 0, 0.0), WordScore("🐶", 1, -2e-4), WordScore("!", 2, -3e-4)]
    chosen, total = select_misaligned(words, "threshold", -5e-5)
    assert [w.word for w in chosen] == ["🐶"]
    assert total == pytest.approx(-2e-4)


def test_most_negative_mode_picks_lowest() -> None:
    chosen, total = select_misaligned(WORDS[:3], "most_negative", -5e-5)
    assert [w.word for w in chosen] == ["a"]
    assert total == -1e-4


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        select_misaligned(WORDS, "bogus", 0.0)  # type: ignore[arg-type]
