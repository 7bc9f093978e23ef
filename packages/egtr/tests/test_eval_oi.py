"""Open Images metrics: candidates, microR@50, wmAP_rel/phr and score_wtd against hand-built
cases and literal loop implementations, under both AP overlaps (the reference protocol's and the
consistent +1-pixel IoU); detection AP with the reference's inclusive boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_eval_boxes import literal_iou, literal_reference_overlap
from test_eval_sgg_vg import _literal_hit, _random_image

from egtr.evaluation import (
    DetectionEvaluator,
    GroundTruth,
    OIEvaluator,
    PredictedTriplets,
    oi_candidates,
    voc_ap,
)

LITERAL_OVERLAPS = {"reference": literal_reference_overlap, "consistent": literal_iou}


def test_candidates_match_a_literal_enumeration() -> None:
    gen = torch.Generator().manual_seed(0)
    n, p = 5, 4
    scores = torch.rand(n, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    boxes = torch.rand(n, 4, generator=gen) * 50
    rel = torch.rand(n, n, p, generator=gen)
    rel[1, 2] = 1e-9  # a pair too weak to survive the 1e-5 filter
    out = oi_candidates(scores, labels, boxes, rel, top_k=30)
    literal = []
    for i in range(n):  # every ordered pair, the diagonal included
        for j in range(n):
            ranked = sorted(range(p), key=lambda q: -rel[i, j, q].item())[:2]
            for q in ranked:
                literal.append((scores[i].item() * scores[j].item() * rel[i, j, q].item(), i, j, q))
    literal.sort(key=lambda x: -x[0])
    literal = [c for c in literal[:30] if c[0] > 1e-5]
    assert len(out) == len(literal) == 30
    assert out.subjects.tolist() == [c[1] for c in literal]
    assert out.objects.tolist() == [c[2] for c in literal]
    assert out.predicates.tolist() == [c[3] for c in literal]
    assert np.allclose(out.scores, [c[0] for c in literal], rtol=1e-6)
    few = oi_candidates(scores, labels, boxes, rel, top_k=1000)
    assert len(few) == 2 * n * n - 2  # all pairs x top-2, minus the filtered weak pair
    assert (1, 2) not in set(zip(few.subjects.tolist(), few.objects.tolist(), strict=True))


def test_voc_ap_by_hand() -> None:
    # TP, FP, TP over 2 GT: envelope precision 1 up to recall .5, then 2/3
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    assert voc_ap(np.array([]), np.array([])) == 0
    assert voc_ap(np.array([1.0]), np.array([1.0])) == 1


def _hand_case() -> list[tuple[GroundTruth, PredictedTriplets]]:
    boxes = [[0, 0, 9, 9], [20, 0, 29, 9], [0, 20, 9, 29], [20, 20, 29, 29]]
    gt_a = GroundTruth.create(boxes, [0, 1, 0, 1], [[0, 1, 0], [2, 3, 0]])
    pred_a = PredictedTriplets.create(
        [*boxes, [0, 0, 9, 9]],
        [0, 1, 0, 1, 0],
        subjects=[0, 4, 2],
        objects=[1, 1, 3],
        predicates=[0, 0, 0],
        scores=[0.9, 0.8, 0.7],
    )  # the second candidate repeats the first relation: a false positive
    gt_b = GroundTruth.create([[0, 0, 9, 9], [10, 0, 19, 9]], [2, 2], [[0, 1, 1]])
    pred_b = PredictedTriplets.create(
        [[0, 0, 4, 9], [10, 0, 19, 9]], [2, 2], [0], [1], [1], [0.6]
    )  # subject IoU exactly 0.5: recalled (>=) but not an AP_rel hit (>) under the consistent
    # overlap; the reference's overlap is 50 / 67, a hit. Union boxes equal.
    return [(gt_a, pred_a), (gt_b, pred_b)]


@pytest.mark.parametrize(("ap_overlap", "p1_rel"), [("reference", 1.0), ("consistent", 0.0)])
def test_hand_built_metrics(ap_overlap: str, p1_rel: float) -> None:
    evaluator = OIEvaluator(3, predicate_names=["p0", "p1", "p2"], ap_overlap=ap_overlap)
    for gt, pred in _hand_case():
        evaluator.add(gt, pred)
    result = evaluator.compute()
    assert result["microR@50"] == 1
    assert evaluator.average_precisions("rel").tolist() == pytest.approx([5 / 6, p1_rel, 0])
    assert evaluator.average_precisions("phr").tolist() == pytest.approx([5 / 6, 1, 0])
    assert result["wmAP_rel"] == pytest.approx((5 / 6 * 2 + p1_rel) / 3)
    assert result["wmAP_phr"] == pytest.approx((5 / 6 * 2 + 1) / 3)
    assert result["mAP_rel"] == pytest.approx((5 / 6 + p1_rel) / 2)  # the predicates present
    assert result["mAP_rel_all_predicates"] == pytest.approx((5 / 6 + p1_rel) / 3)  # all three
    expected = 0.2 * 1 + 0.4 * result["wmAP_rel"] + 0.4 * result["wmAP_phr"]
    assert result["score_wtd"] == pytest.approx(expected)
    assert result["per_predicate"]["p1"] == {"gt": 1, "AP_rel": p1_rel, "AP_phr": 1}
    assert "p2" not in result["per_predicate"]
    assert (result["images"], result["gt_relations"]) == (2, 3)
    assert result["ap_overlap"] == ap_overlap


def _overlap_case() -> tuple[GroundTruth, PredictedTriplets]:
    """Two 30 x 30-pixel GT boxes at the same place (relation p0) and two more 100 pixels to
    the right (p1). The p0 triplet is predicted 10 pixels to the right: +1 IoU 600 / 1200 = 0.5
    for both boxes and the union box, the reference's overlap 600 / 1082 = 0.555. The p1 triplet
    is predicted exactly."""
    gt = GroundTruth.create(
        [[0, 0, 29, 29], [0, 0, 29, 29], [100, 0, 129, 29], [100, 0, 129, 29]],
        [0, 1, 0, 1],
        [[0, 1, 0], [2, 3, 1]],
    )
    pred = PredictedTriplets.create(
        [[10, 0, 39, 29], [10, 0, 39, 29], [100, 0, 129, 29], [100, 0, 129, 29]],
        [0, 1, 0, 1],
        subjects=[0, 2],
        objects=[1, 3],
        predicates=[0, 1],
        scores=[0.9, 0.8],
    )
    return gt, pred


def test_ap_overlap_options_differ_on_a_hand_built_case() -> None:
    gt, pred = _overlap_case()
    results = {}
    for ap_overlap in ("reference", "consistent"):
        evaluator = OIEvaluator(2, ap_overlap=ap_overlap)
        evaluator.add(gt, pred)
        results[ap_overlap] = evaluator.compute()
    reference, consistent = results["reference"], results["consistent"]
    # microR@50 uses the +1 IoU and >= 0.5 under both options: both GT relations are recalled
    assert reference["microR@50"] == consistent["microR@50"] == 1
    # reference: both triplets are true positives; consistent: 0.5 is not > 0.5 for p0
    assert reference["wmAP_rel"] == reference["wmAP_phr"] == 1
    assert consistent["wmAP_rel"] == consistent["wmAP_phr"] == 0.5
    assert reference["score_wtd"] == pytest.approx(1.0)
    assert consistent["score_wtd"] == pytest.approx(0.2 + 0.4 * 0.5 + 0.4 * 0.5)
    assert OIEvaluator(2).compute()["ap_overlap"] == "reference"  # the default
    with pytest.raises(ValueError, match="ap_overlap"):
        OIEvaluator(2, ap_overlap="plain")


def test_recall_counts_only_the_first_50() -> None:
    gt, pred = _hand_case()[1]
    filler = PredictedTriplets.create(
        pred.boxes,
        pred.labels,
        [1] * 50 + [0],
        [0] * 50 + [1],
        [1] * 51,
        np.linspace(1, 0.5, 51),
    )
    evaluator = OIEvaluator(3)
    evaluator.add(gt, filler)
    assert evaluator.compute()["microR@50"] == 0
    empty = OIEvaluator(3).compute()
    assert math.isnan(empty["microR@50"])
    assert math.isnan(empty["score_wtd"])


def _literal_union(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _literal_ap(
    images: list[tuple[GroundTruth, PredictedTriplets]], c: int, kind: str, ap_overlap: str
) -> float:
    overlap = LITERAL_OVERLAPS[ap_overlap]
    dets = [
        (float(pred.scores[t]), i, t)
        for i, (_, pred) in enumerate(images)
        for t in range(len(pred))
        if pred.predicates[t] == c
    ]
    dets.sort(key=lambda d: -d[0])  # stable: image order, then rank, among equal scores
    npos = sum(int((gt.rels[:, 2] == c).sum()) for gt, _ in images)
    visited: set[tuple[int, int]] = set()
    tp, fp = [], []
    for _, i, t in dets:
        gt, pred = images[i]
        ps, po = pred.subjects[t], pred.objects[t]
        best, best_g = -math.inf, -1
        for g in range(len(gt.rels)):
            s, o, p = gt.rels[g]
            if p != c:
                continue
            ov = 0.0
            if gt.labels[s] == pred.labels[ps] and gt.labels[o] == pred.labels[po]:
                if kind == "rel":
                    ov = min(
                        overlap(list(pred.boxes[ps]), list(gt.boxes[s])),
                        overlap(list(pred.boxes[po]), list(gt.boxes[o])),
                    )
                else:
                    ov = overlap(
                        _literal_union(gt.boxes[s], gt.boxes[o]),
                        _literal_union(pred.boxes[ps], pred.boxes[po]),
                    )
            if ov > best:
                best, best_g = ov, g
        if best > 0.5 and (i, best_g) not in visited:
            visited.add((i, best_g))
            tp.append(1)
            fp.append(0)
        else:
            tp.append(0)
            fp.append(1)
    rec, prec, tps, fps = [], [], 0, 0
    for a, b in zip(tp, fp, strict=True):
        tps, fps = tps + a, fps + b
        rec.append(tps / npos)
        prec.append(tps / (tps + fps))
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))


@pytest.mark.parametrize("ap_overlap", ["reference", "consistent"])
def test_matches_literal_implementations_on_random_data(ap_overlap: str) -> None:
    rng = np.random.default_rng(3)
    images = []
    for _ in range(30):
        gt, pred = _random_image(rng)
        scores = np.sort(rng.random(len(pred)))[::-1]
        images.append(
            (
                gt,
                PredictedTriplets.create(
                    pred.boxes, pred.labels, pred.subjects, pred.objects, pred.predicates, scores
                ),
            )
        )
    evaluator = OIEvaluator(4, recall_k=25, ap_overlap=ap_overlap)
    for gt, pred in images:
        evaluator.add(gt, pred)
    result = evaluator.compute()
    matched = sum(
        any(_literal_hit(gt, g, pred, t) for t in range(min(25, len(pred))))
        for gt, pred in images
        for g in range(len(gt.rels))
    )
    total = sum(len(gt.rels) for gt, _ in images)
    assert result["microR@25"] == pytest.approx(matched / total)
    npos = np.array([sum(int((gt.rels[:, 2] == c).sum()) for gt, _ in images) for c in range(4)])
    for kind in ("rel", "phr"):
        literal = np.array([_literal_ap(images, c, kind, ap_overlap) for c in range(4)])
        assert evaluator.average_precisions(kind) == pytest.approx(literal)
        assert result[f"wmAP_{kind}"] == pytest.approx((literal * npos).sum() / npos.sum())
        assert 0.05 < result[f"wmAP_{kind}"] < 0.95


def test_detection_ap_with_the_references_inclusive_boxes() -> None:
    pytest.importorskip("pycocotools")
    gt, det = [[0.0, 0, 9, 9]], [[0.0, 0, 4.4, 9]]
    ap50 = {}
    for inclusive in (False, True):
        evaluator = DetectionEvaluator(1, inclusive_boxes=inclusive)
        evaluator.add(1, gt, [0], det, [0], [0.9])
        ap50[inclusive] = evaluator.compute()["AP50"]
    assert ap50[False] == 0  # COCO IoU of the boxes as given: 39.6 / 81 = 0.49
    assert ap50[True] == pytest.approx(1.0)  # one pixel wider and higher: 54 / 100 = 0.54
