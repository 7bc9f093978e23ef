"""VG SGDet recall metrics against hand-built cases and a literal loop implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_eval_boxes import literal_iou

from egtr.evaluation import GroundTruth, PredictedTriplets, SGGEvaluator, triplet_hits


def _hand_case() -> list[tuple[GroundTruth, PredictedTriplets]]:
    gt_a = GroundTruth.create(
        [[0, 0, 9, 9], [20, 20, 39, 39], [50, 0, 59, 9]],
        [0, 2, 1],
        [[0, 1, 0], [2, 1, 1], [0, 1, 1], [0, 1, 0]],  # the repeated row counts once
    )
    boxes_a = [[0, 0, 4, 9], [20, 20, 39, 39], [50, 0, 59, 9], [0, 0, 3, 9]]
    # q0 overlaps b0 with IoU exactly 0.5 (+1 convention), q3 with 0.4
    pred_a = PredictedTriplets.create(
        boxes_a,
        [0, 2, 1, 0],
        subjects=[3, 2, 0, 0, 0],
        objects=[1, 1, 1, 1, 1],
        predicates=[0, 1, 0, 2, 1],
    )
    gt_b = GroundTruth.create([[0, 0, 9, 9], [10, 10, 19, 19]], [1, 1], [[0, 1, 3]])
    pred_b = PredictedTriplets.create(
        [[0, 0, 9, 9], [10, 10, 19, 19]], [1, 1], subjects=[1, 0], objects=[0, 1], predicates=[3, 3]
    )  # the swapped pair comes first and must not hit
    gt_c = GroundTruth.create([[0, 0, 5, 5]], [0], np.zeros((0, 3)))
    pred_c = PredictedTriplets.create([[0, 0, 5, 5]], [0], [0], [0], [1])
    return [(gt_a, pred_a), (gt_b, pred_b), (gt_c, pred_c)]


def test_hand_built_recalls() -> None:
    seen = np.zeros((4, 4, 4), dtype=bool)
    seen[0, 2, 0] = seen[1, 1, 3] = True
    evaluator = SGGEvaluator(4, ks=(1, 3, 5), seen_triplets=seen, predicate_names="abcd")
    per_image = [evaluator.add(gt, pred) for gt, pred in _hand_case()]
    assert per_image[0] == pytest.approx({"R@1": 0, "R@3": 2 / 3, "R@5": 1})
    assert per_image[1] == pytest.approx({"R@1": 0, "R@3": 1, "R@5": 1})
    assert per_image[2] is None  # no GT relation: skipped
    result = evaluator.compute()
    assert result["R@1"] == 0
    assert result["R@3"] == pytest.approx(5 / 6)
    assert result["R@5"] == 1
    # per predicate: a (p0) 0/1/1, b (p1) 0/0.5/1, d (p3) 0/1/1; c (p2) absent
    assert result["mR@3"] == pytest.approx(2.5 / 3)
    assert result["mR@3_all_predicates"] == pytest.approx(2.5 / 4)
    assert result["mR@5"] == 1
    assert result["mR@5_all_predicates"] == pytest.approx(0.75)
    assert result["per_predicate"]["b"] == {"R@1": 0, "R@3": 0.5, "R@5": 1, "images": 1}
    assert "c" not in result["per_predicate"]
    # zero-shot: both p1 triplets of image A are unseen; image B has none
    assert (result["zR@1"], result["zR@3"], result["zR@5"]) == (0, 0.5, 1)
    assert result["zero_shot_images"] == 1
    assert (result["images"], result["images_without_relations"]) == (2, 1)
    assert result["predicates_present"] == 3


def test_no_zero_shot_without_seen_triplets_and_empty_results() -> None:
    evaluator = SGGEvaluator(4)
    result = evaluator.compute()
    assert "zR@20" not in result
    assert math.isnan(result["R@20"])
    assert math.isnan(result["mR@50"])
    gt, pred = _hand_case()[0]
    evaluator.add(gt, pred.head(0))  # no prediction at all: nothing recalled
    assert evaluator.compute()["R@100"] == 0
    with pytest.raises(ValueError, match="ks"):
        SGGEvaluator(4, ks=())
    with pytest.raises(ValueError, match="seen_triplets"):
        SGGEvaluator(4, seen_triplets=np.zeros((3, 3, 5), dtype=bool))


# --- against a literal implementation on random data ------------------------------------------


def _random_image(rng: np.random.Generator) -> tuple[GroundTruth, PredictedTriplets]:
    m = int(rng.integers(2, 7))
    xy = rng.uniform(0, 60, (m, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (m, 2))], 1)
    labels = rng.integers(0, 3, m)
    r = int(rng.integers(0, 9))
    rels = np.stack([rng.integers(0, m, r), rng.integers(0, m, r), rng.integers(0, 4, r)], 1)
    n = m + 3
    jitter = rng.normal(0, 4, (m, 4))
    extra_xy = rng.uniform(0, 60, (3, 2))
    extra = np.concatenate([extra_xy, extra_xy + 20], 1)
    pred_boxes = np.concatenate([boxes + jitter, extra])
    pred_labels = np.concatenate(
        [np.where(rng.random(m) < 0.8, labels, (labels + 1) % 3), rng.integers(0, 3, 3)]
    )
    t = 40
    subjects, objects = rng.integers(0, n, t), rng.integers(0, n, t)
    predicates = rng.integers(0, 4, t)
    if r:  # about half the triplets copy a GT relation (which may still miss: labels, jitter)
        copy = rng.random(t) < 0.5
        picks = rels[rng.integers(0, r, t)]
        subjects = np.where(copy, picks[:, 0], subjects)
        objects = np.where(copy, picks[:, 1], objects)
        predicates = np.where(copy, picks[:, 2], predicates)
    return (
        GroundTruth.create(boxes, labels, rels),
        PredictedTriplets.create(pred_boxes, pred_labels, subjects, objects, predicates),
    )


def _literal_hit(gt: GroundTruth, g: int, pred: PredictedTriplets, t: int) -> bool:
    s, o, p = gt.rels[g]
    ps, po, pp = pred.subjects[t], pred.objects[t], pred.predicates[t]
    return bool(
        gt.labels[s] == pred.labels[ps]
        and gt.labels[o] == pred.labels[po]
        and p == pp
        and literal_iou(list(gt.boxes[s]), list(pred.boxes[ps])) >= 0.5
        and literal_iou(list(gt.boxes[o]), list(pred.boxes[po])) >= 0.5
    )


def _literal_metrics(
    images: list[tuple[GroundTruth, PredictedTriplets]], ks: tuple[int, ...], seen: np.ndarray
) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        recalls, zero_shot = [], []
        per_predicate: dict[int, list[float]] = {}
        for gt, pred in images:
            if len(gt.rels) == 0:
                continue
            recalled = [
                any(_literal_hit(gt, g, pred, t) for t in range(min(k, len(pred))))
                for g in range(len(gt.rels))
            ]
            recalls.append(sum(recalled) / len(recalled))
            for p in set(gt.rels[:, 2].tolist()):
                idx = [g for g in range(len(gt.rels)) if gt.rels[g, 2] == p]
                per_predicate.setdefault(p, []).append(sum(recalled[g] for g in idx) / len(idx))
            zs = [
                g
                for g in range(len(gt.rels))
                if not seen[gt.labels[gt.rels[g, 0]], gt.labels[gt.rels[g, 1]], gt.rels[g, 2]]
            ]
            if zs:
                zero_shot.append(sum(recalled[g] for g in zs) / len(zs))
        out[f"R@{k}"] = sum(recalls) / len(recalls)
        means = [sum(v) / len(v) for v in per_predicate.values()]
        out[f"mR@{k}"] = sum(means) / len(means)
        out[f"mR@{k}_all_predicates"] = sum(means) / 4
        out[f"zR@{k}"] = sum(zero_shot) / len(zero_shot)
    return out


def test_matches_the_literal_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    images = [_random_image(rng) for _ in range(40)]
    seen = rng.random((4, 4, 4)) < 0.5
    ks = (5, 10, 20)
    evaluator = SGGEvaluator(4, ks=ks, seen_triplets=seen)
    for gt, pred in images:
        evaluator.add(gt, pred)
    result = evaluator.compute()
    expected = _literal_metrics(images, ks, seen)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    assert 0.05 < result["R@20"] < 0.95  # the random case is not degenerate


def test_hit_matrix_matches_the_literal_test() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        gt, pred = _random_image(rng)
        hits = triplet_hits(gt, pred)
        expected = [
            [_literal_hit(gt, g, pred, t) for t in range(len(pred))] for g in range(len(gt.rels))
        ]
        assert hits.tolist() == expected
