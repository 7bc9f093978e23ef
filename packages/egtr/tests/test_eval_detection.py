"""Detection AP through pycocotools on cases whose AP50 is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from egtr.evaluation import DetectionEvaluator, top_detections

pytest.importorskip("pycocotools")


def test_perfect_detections_score_one() -> None:
    evaluator = DetectionEvaluator(3)
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 50]])
    evaluator.add(1, gt, [0, 2], gt, [0, 2], [0.9, 0.8])
    evaluator.add(2, gt[:1], [1], gt[:1] + 0.5, [1], [0.7])
    result = evaluator.compute()
    assert result["AP50"] == pytest.approx(1.0)


def test_half_recall_gives_51_of_101_points() -> None:
    # one TP (best score), one FP (wrong class), one GT never found: recall 0.5 at precision 1
    evaluator = DetectionEvaluator(2)
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70]])
    dets = torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70]])
    evaluator.add(7, gt, [0, 0], dets, [0, 1], [0.9, 0.8])
    result = evaluator.compute()
    assert result["AP50"] == pytest.approx(51 / 101)
    # AP over IoU .50:.95 is the same here (the TP is exact); class 1 has no GT and is ignored
    assert result["AP"] == pytest.approx(51 / 101)


def test_iou_threshold_and_empty_cases() -> None:
    evaluator = DetectionEvaluator(1)
    # plain IoU 0.4: not a hit at 0.5
    evaluator.add(1, [[0, 0, 10, 10]], [0], [[0, 0, 4, 10]], [0], [0.9])
    assert evaluator.compute()["AP50"] == 0
    no_dets = DetectionEvaluator(1)
    no_dets.add(1, [[0, 0, 10, 10]], [0], torch.zeros(0, 4), [], [])
    assert no_dets.compute()["AP50"] == 0
    assert math.isnan(DetectionEvaluator(1).compute()["AP50"])


def test_top_detections_match_a_literal_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen)
    boxes = torch.rand(7, 4, generator=gen)
    out_boxes, labels, scores, queries = top_detections(logits, boxes, k=10)
    flat = [(torch.sigmoid(logits[q, c]).item(), q, c) for q in range(7) for c in range(5)]
    flat.sort(key=lambda x: -x[0])
    assert queries.tolist() == [q for _, q, _ in flat[:10]]
    assert labels.tolist() == [c for _, _, c in flat[:10]]
    assert torch.allclose(scores, torch.tensor([s for s, _, _ in flat[:10]]))
    assert torch.equal(out_boxes, boxes[queries])
    assert len(top_detections(logits, boxes, k=100)[0]) == 35
