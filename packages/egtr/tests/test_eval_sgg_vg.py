"""VG SGDet recall metrics against hand-built cases and a literal loop implementation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from test_eval_boxes import literal_iou

from egtr.evaluation import GroundTruth, PredictedTriplets, SGGEvaluator, triplet_hits
from egtr.evaluation.sgg_vg import ceiling_is_exact, graph_constrained_ceiling


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


def test_graph_constrained_ceiling_of_a_shared_pair() -> None:
    # three relations share the pair (0, 1), one is alone: one predicate per pair hits 2 of 4
    gt = GroundTruth.create(
        [[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]],
        [0, 1, 2],
        [[0, 1, 0], [0, 1, 1], [0, 1, 2], [1, 2, 0]],
    )
    assert graph_constrained_ceiling(gt, (1, 2, 5)).tolist() == [0.25, 0.5, 0.5]
    assert ceiling_is_exact(gt)
    image_b = GroundTruth.create([[0, 0, 9, 9], [20, 20, 29, 29]], [0, 1], [[0, 1, 3]])
    empty = GroundTruth.create([[0, 0, 5, 5]], [0], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one GT relation"):
        graph_constrained_ceiling(empty, (1,))
    pred = PredictedTriplets.create([[0, 0, 9, 9]], [0], [0], [0], [0])
    graph = SGGEvaluator(4, ks=(1, 2, 5), graph_constrained=True)
    free = SGGEvaluator(4, ks=(1, 2, 5))
    for evaluator in (graph, free):
        for image in (gt, image_b, empty):
            evaluator.add(image, pred)
    result = graph.compute()
    # averaged like R@K: over the two images with relations
    assert result["R@1_ceiling"] == pytest.approx((0.25 + 1) / 2)
    assert result["R@2_ceiling"] == result["R@5_ceiling"] == pytest.approx(0.75)
    assert result["ceiling_inexact_images"] == 0
    assert list(result)[:6] == ["R@1", "R@1_ceiling", "R@2", "R@2_ceiling", "R@5", "R@5_ceiling"]
    unconstrained = free.compute()
    assert not any("ceiling" in key for key in unconstrained)
    # only new keys: every other number is the unconstrained-style evaluator's
    assert {k: v for k, v in result.items() if "ceiling" not in k} == unconstrained


def test_ceiling_flags_boxes_one_prediction_can_hit_twice() -> None:
    # two identical same-label subjects: one predicted triplet hits both relations
    twins = GroundTruth.create(
        [[0, 0, 9, 9], [0, 0, 9, 9], [20, 20, 29, 29]], [0, 0, 1], [[0, 2, 0], [1, 2, 0]]
    )
    pred = PredictedTriplets.create([[0, 0, 9, 9], [20, 20, 29, 29]], [0, 1], [0], [1], [0])
    assert triplet_hits(twins, pred).sum() == 2  # recall 1 > the formula's 1/2 at K=1
    assert graph_constrained_ceiling(twins, (1,)).tolist() == [0.5]
    assert not ceiling_is_exact(twins)
    # touching boxes: [0, 0, 9, 9] has IoU exactly 0.5 with both halves
    halves = GroundTruth.create([[0, 0, 4, 9], [5, 0, 9, 9]], [0, 0], [[0, 1, 0]])
    both = PredictedTriplets.create([[0, 0, 9, 9]], [0], [0], [0], [0])
    assert triplet_hits(GroundTruth.create(halves.boxes, halves.labels, [[0, 0, 0]]), both).all()
    assert literal_iou([0, 0, 9, 9], [5, 0, 9, 9]) == 0.5
    assert not ceiling_is_exact(halves)
    apart = GroundTruth.create([[0, 0, 4, 9], [6, 0, 9, 9]], [0, 0], [[0, 1, 0]])
    assert ceiling_is_exact(apart)
    assert not ceiling_is_exact(apart, iou_threshold=0.3)
    evaluator = SGGEvaluator(1, ks=(1,), graph_constrained=True)
    evaluator.add(twins, pred)
    assert evaluator.compute()["ceiling_inexact_images"] == 1


def _best_graph_constrained_hits(gt: GroundTruth, k: int, num_predicates: int) -> int:
    """Literal search: a perfect detector (one predicted object per GT object), every choice of
    at most one predicate per ordered pair of predicted objects, at most ``k`` triplets."""
    objects = len(gt.labels)
    pairs = [(s, o) for s in range(objects) for o in range(objects) if s != o]
    best = 0
    for choice in itertools.product(range(-1, num_predicates), repeat=len(pairs)):
        chosen = [(pair, p) for pair, p in zip(pairs, choice, strict=True) if p >= 0]
        if len(chosen) > k:
            continue
        pred = PredictedTriplets.create(
            gt.boxes,
            gt.labels,
            [s for (s, _), _ in chosen],
            [o for (_, o), _ in chosen],
            [p for _, p in chosen],
        )
        best = max(best, int(triplet_hits(gt, pred).any(axis=1).sum()))
    return best


def test_ceiling_matches_a_literal_search_on_random_data() -> None:
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 6:
        objects = 3
        corners = rng.permutation(9)[:objects] * 20.0  # apart: no clash
        boxes = np.stack([corners, corners, corners + 9, corners + 9], axis=1)
        labels = rng.integers(0, 2, objects)
        rels = [
            (s, o, p)
            for s in range(objects)
            for o in range(objects)
            for p in range(2)
            if s != o and rng.random() < 0.4
        ]
        if not rels:
            continue
        gt = GroundTruth.create(boxes, labels, rels)
        assert ceiling_is_exact(gt)
        ks = (1, 2, 3, 6)
        ceiling = graph_constrained_ceiling(gt, ks)
        for k, value in zip(ks, ceiling, strict=True):
            assert value == pytest.approx(_best_graph_constrained_hits(gt, k, 2) / len(gt.rels))
        checked += 1
