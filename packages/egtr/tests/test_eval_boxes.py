"""IoU with the +1-pixel convention: hand values, edge cases at 0.5, and a literal loop."""

from __future__ import annotations

import numpy as np
import pytest

from egtr.evaluation import box_iou, paired_iou, union_boxes
from egtr.evaluation.boxes import box_area


def literal_iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def test_hand_values() -> None:
    # a 10x10-pixel box ([0, 9] inclusive) and its left half: 50 / 100 = exactly 0.5 ...
    assert box_iou([[0, 0, 9, 9]], [[0, 0, 4, 9]])[0, 0] == 0.5
    # ... while the plain IoU would be 36 / 81 < 0.5
    assert box_iou([[0, 0, 10, 10]], [[0, 0, 5, 10]])[0, 0] == pytest.approx(66 / 121)
    # boxes touching at one pixel column overlap by that column
    assert box_iou([[0, 0, 9, 9]], [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 190)
    # one pixel apart: no overlap; identical: 1; a zero-size box is one pixel
    assert box_iou([[0, 0, 9, 9]], [[10, 0, 19, 9]])[0, 0] == 0
    assert box_iou([[3, 4, 7, 8]], [[3, 4, 7, 8]])[0, 0] == 1
    assert box_area([[5, 5, 5, 5]]).tolist() == [1.0]
    assert union_boxes([[0, 5, 3, 9]], [[2, 1, 8, 4]]).tolist() == [[0, 1, 8, 9]]


def test_matches_a_literal_loop() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (30, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 30, (30, 2))], 1)
    xy = rng.uniform(0, 50, (20, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 30, (20, 2))], 1)
    iou = box_iou(a, b)
    expected = [[literal_iou(list(x), list(y)) for y in b] for x in a]
    assert np.allclose(iou, expected)
    assert np.allclose(paired_iou(a[:20], b), np.diag(iou[:20]))
    assert box_iou(a, np.zeros((0, 4))).shape == (30, 0)
