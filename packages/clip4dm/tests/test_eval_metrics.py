"""Benchmark metrics and judging on hand-constructed predictions, against hand-computed values and
literal implementations of the definitions."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from clip4dm.alignment import split_words
from clip4dm.eval import (
    GroundTruth,
    Outcome,
    Sample,
    average_precision,
    get_benchmark,
    localisation_accuracy,
    lowest_phrase,
    merge_phrases,
    micro_prf,
    pearson,
    richhf_tokens,
    spearman,
    summarise,
)
from clip4dm.eval.foil import judge_word
from clip4dm.eval.hat import judge_phrase
from clip4dm.eval.metrics import rankdata, summarise_groups
from clip4dm.eval.richhf import judge_tokens, predicted_tokens
from clip4dm.eval.seetrue import judge_feedback
from clip4dm.results import Detection, WordScore

# -- literal definitions ---------------------------------------------------------------------------


def literal_ap(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Mean over positives of the precision at the threshold of that positive's score."""
    positives = [s for y, s in zip(labels, scores, strict=True) if y]
    total = 0.0
    for threshold in positives:
        above = [y for y, s in zip(labels, scores, strict=True) if s >= threshold]
        total += sum(above) / len(above)
    return total / len(positives)


def literal_ranks(values: Sequence[float]) -> list[float]:
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def literal_pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy)


# -- average precision ---------------------------------------------------------------------------


def test_average_precision_hand_values() -> None:
    # 0.9 (+) P=1 R=.5; 0.8 (-); 0.7 (+) P=2/3 R=1 -> .5 * 1 + .5 * 2/3
    assert average_precision([True, False, True, False], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(
        0.5 + 1 / 3
    )
    # tied scores enter together: 0.5 -> tp 1, fp 1 (P=.5, R=.5); 0.2 -> P=2/3, R=1
    assert average_precision([True, False, True], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 1 / 3)
    assert average_precision([True, True], [0.1, 0.2]) == 1.0
    assert average_precision([False, False], [0.1, 0.2]) is None
    assert average_precision([False, True], [0.9, 0.1]) == 0.5


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_equals_the_literal_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = [bool(v) for v in rng.random(n) < 0.4]
    labels[0] = True
    scores = [float(v) for v in rng.integers(0, 8, n) / 7.0]  # many ties
    assert average_precision(labels, scores) == pytest.approx(literal_ap(labels, scores))


def test_average_precision_matches_scikit_learn_when_installed() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200), 2)
    expected = sklearn_metrics.average_precision_score(labels, scores)
    assert average_precision(list(labels), list(scores)) == pytest.approx(expected)


def test_average_precision_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one length"):
        average_precision([True], [0.1, 0.2])


# -- LA, P/R/F1, correlations ---------------------------------------------------------------------


def _outcome(aligned: bool, cs: float, fcs: float, **kw: object) -> Outcome:
    return Outcome(aligned=aligned, clip_score=cs, f_clip_score=fcs, **kw)  # type: ignore[arg-type]


def test_localisation_accuracy_counts_misaligned_captions_only() -> None:
    outcomes = [
        _outcome(True, 0.5, 0.0, correct=None),
        _outcome(False, 0.5, 0.0, correct=True),
        _outcome(False, 0.5, 0.0, correct=False),
        _outcome(False, 0.5, 0.0, correct=None),  # no prediction at all
    ]
    assert localisation_accuracy(outcomes) == pytest.approx(1 / 3)
    assert localisation_accuracy(outcomes[:1]) is None


def test_micro_prf() -> None:
    assert micro_prf(3, 1, 2) == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 0.9 / 1.35})
    assert micro_prf(0, 2, 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert micro_prf(0, 0, 3) == {"precision": None, "recall": 0.0, "f1": None}


@pytest.mark.parametrize("seed", range(3))
def test_ranks_and_correlations_equal_literal_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = [float(v) for v in rng.integers(0, 5, 25)]  # ties
    y = [float(v) for v in rng.normal(size=25)]
    assert list(rankdata(x)) == literal_ranks(x)
    assert pearson(x, y) == pytest.approx(literal_pearson(x, y))
    assert spearman(x, y) == pytest.approx(literal_pearson(literal_ranks(x), literal_ranks(y)))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y).statistic)


def test_correlation_of_degenerate_inputs_is_none() -> None:
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert pearson([1.0], [2.0]) is None
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


# -- per-benchmark summaries and groups ------------------------------------------------------------


def test_summarise_word_benchmark_with_groups() -> None:
    """nocaps-FOIL: positives are aligned captions ranked by score; per-domain splits."""
    outcomes = [
        _outcome(True, 0.8, -0.001, group="in"),
        _outcome(False, 0.6, -0.004, correct=True, group="in"),
        _outcome(True, 0.5, -0.002, group="out"),
        _outcome(False, 0.7, -0.003, correct=False, group="out"),
        _outcome(False, 0.4, -0.005, correct=True, group="out"),
    ]
    bench = get_benchmark("nocaps-foil")
    overall = summarise(outcomes, bench)
    assert overall["samples"] == 5
    assert (overall["aligned"], overall["misaligned"]) == (2, 3)
    assert overall["LA"] == pytest.approx(2 / 3)
    # CLIPScore ranking .8(A) .7 .6 .5(A) .4: P=1 at R=.5, P=2/4 at R=1
    assert overall["AP"] == pytest.approx({"CLIPScore": 0.75, "F-CLIPScore": 1.0})
    groups = summarise_groups(outcomes, bench)
    assert list(groups) == ["in", "out"]
    assert groups["in"]["LA"] == 1.0
    assert groups["in"]["AP"] == pytest.approx({"CLIPScore": 1.0, "F-CLIPScore": 1.0})
    assert groups["out"]["LA"] == 0.5
    assert groups["out"]["AP"]["CLIPScore"] == pytest.approx(0.5)  # .7(M) .5(A) .4(M)
    assert groups["out"]["samples"] == 3


def test_summarise_misaligned_positive_uses_negated_scores_and_refclipscore() -> None:
    """HAT: positives are misaligned captions, ranked by negated scores."""
    outcomes = [
        _outcome(True, 0.9, 0.0, ref_clip_score=0.8),
        _outcome(False, 0.3, -0.002, correct=True, ref_clip_score=0.7),
        _outcome(False, 0.6, -0.001, correct=False, ref_clip_score=0.9),
    ]
    result = summarise(outcomes, get_benchmark("hat"))
    # -CLIPScore: -.3(M) -.6(M) -.9(A) -> 1.0; -F: .002(M) .001(M) 0(A) -> 1.0
    # -RefCLIPScore: -.7(M) -.8(A) -.9(M): P=1 at R=.5, P=2/3 at R=1
    assert result["AP"] == pytest.approx(
        {"CLIPScore": 1.0, "F-CLIPScore": 1.0, "RefCLIPScore": 0.5 + 1 / 3}
    )
    assert result["LA"] == 0.5
    # RefCLIPScore only when every sample has it
    partial = [*outcomes, _outcome(False, 0.1, -0.003, correct=True)]
    assert "RefCLIPScore" not in summarise(partial, get_benchmark("hat"))["AP"]


def test_summarise_richhf_token_counts_and_correlations() -> None:
    outcomes = [
        _outcome(False, 0.2, -0.003, correct=True, tp=2, fp=1, fn=1, human_score=1.0),
        _outcome(False, 0.4, -0.001, correct=False, tp=0, fp=2, fn=1, human_score=2.0),
        _outcome(True, 0.7, 0.0, correct=None, tp=0, fp=1, fn=0, human_score=4.0),
        _outcome(True, 0.6, -0.0005, correct=None, tp=0, fp=0, fn=0, human_score=5.0),
    ]
    result = summarise(outcomes, get_benchmark("richhf"))
    assert (result["tp"], result["fp"], result["fn"]) == (2, 4, 2)
    assert result["precision"] == pytest.approx(2 / 6)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert result["LA"] == 0.5
    human = [1.0, 2.0, 4.0, 5.0]
    assert result["pearson"]["CLIPScore"] == pytest.approx(
        literal_pearson(human, [0.2, 0.4, 0.7, 0.6])
    )
    assert result["spearman"]["F-CLIPScore"] == pytest.approx(
        literal_pearson(literal_ranks(human), literal_ranks([-0.003, -0.001, 0.0, -0.0005]))
    )
    assert result["AP"]["CLIPScore"] == pytest.approx(1.0)


def test_summarise_nli_mean_per_source() -> None:
    outcomes = [
        _outcome(False, 0.5, -0.001, nli_score=0.9, group="a"),
        _outcome(False, 0.5, -0.001, nli_score=0.0, group="a"),
        _outcome(False, 0.5, -0.001, nli_score=0.3, group="b"),
    ]
    bench = get_benchmark("seetrue")
    assert summarise(outcomes, bench)["NLI"] == pytest.approx(0.4)
    assert "LA" not in summarise(outcomes, bench)
    groups = summarise_groups(outcomes, bench)
    assert groups["a"]["NLI"] == pytest.approx(0.45)
    assert groups["b"]["NLI"] == pytest.approx(0.3)


def test_outcome_from_row() -> None:
    row = {
        "id": "1",
        "ground_truth": {"aligned": False, "words": ["dog"]},
        "clip_score": 0.5,
        "f_clip_score": -0.01,
        "ref_clip_score": None,
        "correct": True,
        "group": "out-domain",
    }
    outcome = Outcome.from_row(row)
    assert outcome == Outcome(
        aligned=False, clip_score=0.5, f_clip_score=-0.01, correct=True, group="out-domain"
    )


# -- judging detections ----------------------------------------------------------------------------


def _detection(caption: str, scores: Sequence[float], selected: Sequence[int]) -> Detection:
    words = [
        WordScore(w.text, i, s, w.start, w.end)
        for i, (w, s) in enumerate(zip(split_words(caption), scores, strict=True))
    ]
    chosen = [words[i] for i in selected]
    return Detection(
        caption=caption,
        words=words,
        misaligned=chosen,
        negative_sum=sum(w.score for w in chosen),
        cosine=0.3,
        clip_score=0.75,
        f_clip_score=sum(w.score for w in chosen) * 0.7,
        mode="threshold",
    )


def _sample(caption: str, truth: GroundTruth) -> Sample:
    return Sample(id="s", image="x.png", caption=caption, ground_truth=truth)


def test_merge_phrases_skips_punctuation_and_picks_the_lowest_mean() -> None:
    caption = "a red, blue car on the road."
    # words: a red , blue car on the road .
    det = _detection(caption, [0, -3, 0, -1, 1, 0, 0, -2.5, 0], [1, 3, 7])
    phrases = merge_phrases(det.words, det.misaligned)
    assert [p.text for p in phrases] == ["red blue", "road"]
    assert [p.score for p in phrases] == [-2.0, -2.5]
    best = lowest_phrase(phrases)
    assert best is not None
    assert best.text == "road"
    tie = _detection("red car blue", [-1, 0, -1], [0, 2])
    tied = lowest_phrase(merge_phrases(tie.words, tie.misaligned))
    assert tied is not None
    assert tied.text == "red"  # first on ties
    assert lowest_phrase([]) is None


def test_judge_phrase_needs_the_phrase_among_the_hallucinated_words() -> None:
    caption = "A red, blue car near two buses"
    # words: A red , blue car near two buses
    truth = GroundTruth(aligned=False, words=("red", "blue", "buses"))
    det = _detection(caption, [0, -3, 0, -1, 1, 0, 0, 0], [1, 3])
    judged = judge_phrase(_sample(caption, truth), det)
    assert (judged.prediction, judged.correct) == ("red blue", True)
    det = _detection(caption, [0, 0, 0, 0, -1, 0, 0, 0], [4])
    assert judge_phrase(_sample(caption, truth), det).correct is False
    # a partial word is not a match ("bus" is not "buses")
    bus = _detection("a bus", [0, -1], [1])
    assert judge_phrase(_sample("a bus", truth), bus).correct is False
    nothing = _detection(caption, [0] * 8, [])
    assert judge_phrase(_sample(caption, truth), nothing).correct is False
    aligned = judge_phrase(_sample(caption, GroundTruth(aligned=True)), det)
    assert (aligned.prediction, aligned.correct) == ("car", None)


def test_judge_word_takes_the_lowest_selected_word_lowercased() -> None:
    det = _detection("A Dog on a sofa", [0, -2, -1, 0, 0], [2, 1])
    truth = GroundTruth(aligned=False, words=("dog",))
    judged = judge_word(_sample("A Dog on a sofa", truth), det)
    assert (judged.prediction, judged.correct) == ("dog", True)
    wrong = judge_word(_sample("x", GroundTruth(aligned=False, words=("sofa",))), det)
    assert wrong.correct is False
    assert judge_word(_sample("x", GroundTruth(aligned=True)), det).correct is None


def test_judge_feedback_joins_phrases_in_caption_order() -> None:
    det = _detection("a red cat and a blue dog", [0, -1, -2, 0, 0, -3, 0], [5, 1, 2])
    judged = judge_feedback(_sample("", GroundTruth(aligned=False, text="x")), det)
    assert judged.prediction == "red cat, blue"


def google_richhf_tokenize(prompt: str) -> list[str]:
    """RichHF-18K's own rule (match_label_to_token.py), literally."""
    pattern = "|".join(map(re.escape, ',.?!":; '))
    return [t for t in re.split(pattern, prompt) if t]


@pytest.mark.parametrize(
    "prompt",
    ['A "cat", 3.5 dogs!', "no-delims here", "Hi!!  what?is;this:  ", "", "a\tb  c.d"],
)
def test_richhf_tokens_follow_the_richhf_rule(prompt: str) -> None:
    tokens = richhf_tokens(prompt)
    assert [t.text for t in tokens] == google_richhf_tokenize(prompt)
    assert all(prompt[t.start : t.end] == t.text for t in tokens)


def test_richhf_prediction_indices_are_aligned_on_richhf_tokens() -> None:
    prompt = 'A "cat", 3.5 dogs!'
    # detector words: A " cat ", 3.5 dogs !   Rich-HF tokens: A cat 3 5 dogs
    det = _detection(prompt, [0, 0, -2, 0, -1, -3, 0], [2, 4, 5])
    assert predicted_tokens(prompt, det.misaligned) == [1, 2, 3, 4]
    truth = GroundTruth(aligned=False, tokens=((1, "cat"), (0, "A")))
    judged = judge_tokens(_sample(prompt, truth), det)
    assert judged.prediction == [[1, "cat"], [2, "3"], [3, "5"], [4, "dogs"]]
    assert (judged.tp, judged.fp, judged.fn, judged.correct) == (1, 3, 1, True)
    # the words' own spans place them: a word whose span does not hold it is refused
    moved = [WordScore("cat", 2, -2.0, 0, 3)]
    with pytest.raises(ValueError, match="not a word of"):
        predicted_tokens(prompt, moved)
    with pytest.raises(ValueError, match="span None"):
        predicted_tokens(prompt, [WordScore("cat", 2, -2.0)])
    clean = judge_tokens(_sample(prompt, GroundTruth(aligned=True)), det)
    assert (clean.tp, clean.fp, clean.fn, clean.correct) == (0, 4, 0, None)
