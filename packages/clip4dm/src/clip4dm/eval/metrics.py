"""Benchmark metrics: localisation accuracy (LA, LA_exact, LA_chance), average precision, micro
P/R/F1, correlations, NLI, and the pairwise CLIPScore comparison of FOIL-style data.

All are computed from `Outcome`s (one per scored sample, read back from ``samples.jsonl``), so a
sharded run and a single-process run that wrote the same rows get the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from clip4dm.eval.samples import Benchmark

__all__ = [
    "Outcome",
    "average_precision",
    "chance_accuracy",
    "exact_accuracy",
    "localisation_accuracy",
    "micro_prf",
    "pairwise_accuracy",
    "pearson",
    "rankdata",
    "spearman",
    "summarise",
    "summarise_groups",
]

SCORES = ("CLIPScore", "F-CLIPScore", "RefCLIPScore")


@dataclass(frozen=True)
class Outcome:
    """What the metrics need from one scored sample.

    ``exact``: the prediction is at the misaligned word positions (``None`` without positions);
    ``chance``: the chance that one word drawn at random from the caption is misaligned
    (misaligned captions only); ``pair``: the image the caption belongs to (FOIL-style data);
    ``pairwise``: the share of the aligned captions of the same ``pair`` whose CLIPScore is above
    this misaligned caption's (ties count half), filled in by `with_pairwise`.
    """

    aligned: bool
    clip_score: float
    f_clip_score: float
    ref_clip_score: float | None = None
    correct: bool | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    nli_score: float | None = None
    human_score: float | None = None
    group: str | None = None
    exact: bool | None = None
    chance: float | None = None
    pair: str | None = None
    pairwise: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Outcome:
        """From a result row of ``samples.jsonl`` (not an error row). Raises ``KeyError`` or
        ``TypeError`` for a row without the fields of a result row."""
        truth = row["ground_truth"]
        return cls(
            aligned=bool(truth["aligned"]),
            clip_score=float(row["clip_score"]),
            f_clip_score=float(row["f_clip_score"]),
            ref_clip_score=row.get("ref_clip_score"),
            correct=row.get("correct"),
            tp=row.get("tp"),
            fp=row.get("fp"),
            fn=row.get("fn"),
            nli_score=row.get("nli_score"),
            human_score=row.get("human_score"),  # clip4dm.rows.upgrade renames gt_score
            group=row.get("group"),
            exact=row.get("correct_exact"),
            chance=_chance(truth, row.get("words")),
            pair=row.get("pair"),
        )

    def score(self, name: str) -> float | None:
        """The caption-level score called ``name`` (one of `SCORES`)."""
        return {
            "CLIPScore": self.clip_score,
            "F-CLIPScore": self.f_clip_score,
            "RefCLIPScore": self.ref_clip_score,
        }[name]


def _chance(truth: Mapping[str, Any], words: Any) -> float | None:
    """Misaligned words / scored words of a misaligned caption (``None`` for aligned ones)."""
    if truth.get("aligned", True) or not isinstance(words, list) or not words:
        return None
    wrong = len(truth.get("positions") or truth.get("words") or ())
    return wrong / len(words) if wrong else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Average precision as scikit-learn defines it: ``Σ_n (R_n − R_{n−1}) P_n`` over the distinct
    score thresholds, high scores first (tied scores enter together). ``None`` without positives.

    Raises ``ValueError`` when labels and scores are not 1-d of one length.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of one length, got {y.shape}, {s.shape}")
    if not y.any():
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[ends]
    precision = tps / (ends + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def localisation_accuracy(outcomes: Sequence[Outcome]) -> float | None:
    """Correct localisations / misaligned captions; ``None`` without misaligned captions."""
    misaligned = [o for o in outcomes if not o.aligned]
    if not misaligned:
        return None
    return sum(o.correct is True for o in misaligned) / len(misaligned)


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values)) / len(values) if values else None


def exact_accuracy(outcomes: Sequence[Outcome]) -> float | None:
    """``LA_exact``: predictions at exactly the misaligned word positions / misaligned captions
    whose data gives the positions; ``None`` when none does. Stricter than LA where a caption
    repeats the misaligned word elsewhere."""
    return _mean([o.exact is True for o in outcomes if not o.aligned and o.exact is not None])


def chance_accuracy(outcomes: Sequence[Outcome]) -> float | None:
    """``LA_chance``: the mean, over misaligned captions, of the chance that a word drawn at
    random is misaligned (1 / words for a one-word foil); ``None`` without such captions."""
    return _mean([o.chance for o in outcomes if not o.aligned and o.chance is not None])


def with_pairwise(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """``outcomes`` with `Outcome.pairwise` filled in for each misaligned caption that has
    aligned captions of the same `Outcome.pair`: the share of them whose CLIPScore is higher
    (ties count half). Values already set are kept, so a subset of filled outcomes keeps its
    values. Returns a new list in the same order."""
    aligned: dict[str, list[float]] = {}
    for o in outcomes:
        if o.aligned and o.pair is not None:
            aligned.setdefault(o.pair, []).append(o.clip_score)
    out: list[Outcome] = []
    for o in outcomes:
        scores = aligned.get(o.pair) if o.pair is not None else None
        if o.aligned or o.pairwise is not None or not scores:
            out.append(o)
            continue
        won = sum(s > o.clip_score for s in scores) + 0.5 * sum(s == o.clip_score for s in scores)
        out.append(replace(o, pairwise=won / len(scores)))
    return out


def pairwise_accuracy(outcomes: Sequence[Outcome]) -> float | None:
    """``pairwise``: how often the CLIP scores a misaligned caption below the aligned captions
    of its image (mean of `Outcome.pairwise` after `with_pairwise`; 0.5 = it cannot tell them
    apart); ``None`` when the data pairs no captions."""
    return _mean([o.pairwise for o in with_pairwise(outcomes) if o.pairwise is not None])


def micro_prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Micro precision, recall and F1 from summed counts (``None`` where a denominator is 0)."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def rankdata(values: Sequence[float]) -> npt.NDArray[np.float64]:
    """1-based ranks, ties given their average rank."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    bounds = np.r_[starts, x.size]
    average = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    group = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; ``None`` for fewer than 2 points or a constant input.

    Raises ``ValueError`` when ``x`` and ``y`` are not 1-d of one length.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, got {a.shape}, {b.shape}")
    if a.size < 2:
        return None
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    if denom == 0.0:
        return None
    return _finite(max(-1.0, min(1.0, float(np.dot(a, b)) / denom)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); ``None`` as for `pearson`.

    Raises ``ValueError`` when ``x`` and ``y`` differ in length.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have one length, got {len(x)}, {len(y)}")
    return pearson(list(rankdata(x)), list(rankdata(y)))


def summarise(outcomes: Sequence[Outcome], benchmark: Benchmark) -> dict[str, Any]:
    """The benchmark's metrics over ``outcomes`` (JSON-ready; undefined values are ``None``)."""
    misaligned = sum(not o.aligned for o in outcomes)
    out: dict[str, Any] = {
        "samples": len(outcomes),
        "misaligned": misaligned,
        "aligned": len(outcomes) - misaligned,
    }
    if benchmark.localisation:
        out["LA"] = localisation_accuracy(outcomes)
        for name, value in (
            ("LA_exact", exact_accuracy(outcomes)),
            ("LA_chance", chance_accuracy(outcomes)),
        ):
            if value is not None:  # only where the data gives positions / words
                out[name] = value
    positive_aligned = benchmark.positive == "aligned"
    labels = [o.aligned == positive_aligned for o in outcomes]
    ap: dict[str, float | None] = {}
    for name in SCORES:
        values = [o.score(name) for o in outcomes]
        if name == "RefCLIPScore" and (not outcomes or any(v is None for v in values)):
            continue  # only when every scored sample had references
        numbers = [float(v) for v in values if v is not None]
        ap[name] = average_precision(labels, numbers if positive_aligned else [-v for v in numbers])
    out["AP"] = ap
    if benchmark.token_prf:
        counts = {k: sum(getattr(o, k) or 0 for o in outcomes) for k in ("tp", "fp", "fn")}
        out.update(micro_prf(counts["tp"], counts["fp"], counts["fn"]))
        out.update(counts)
    if benchmark.correlation:
        rated = [o for o in outcomes if o.human_score is not None]
        human = [float(o.human_score) for o in rated if o.human_score is not None]
        for method, function in (("pearson", pearson), ("spearman", spearman)):
            out[method] = {
                name: function(human, [float(o.score(name) or 0.0) for o in rated])
                for name in SCORES[:2]
            }
    if benchmark.nli:
        nli = [o.nli_score for o in outcomes if o.nli_score is not None]
        out["NLI"] = sum(nli) / len(nli) if nli else None
    pairwise = pairwise_accuracy(outcomes)
    if pairwise is not None:
        out["pairwise"] = pairwise
    return out


def summarise_groups(outcomes: Sequence[Outcome], benchmark: Benchmark) -> dict[str, Any]:
    """`summarise` per group (sorted by name); samples without a group are left out (the
    pairwise metric of a group still compares with the aligned captions of any group)."""
    filled = with_pairwise(outcomes)
    groups = sorted({o.group for o in filled if o.group is not None})
    return {g: summarise([o for o in filled if o.group == g], benchmark) for g in groups}
