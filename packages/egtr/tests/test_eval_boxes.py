"""IoU with the +1-pixel convention and the Open Images reference's AP overlap: hand values, edge
cases at 0.5, and literal loops."""

from __future__ import annotations

import numpy as np
import pytest

from egtr.evaluation import box_iou, paired_iou, union_boxes
from egtr.evaluation.boxes import box_area, oi_reference_ap_overlap


def literal_iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def literal_reference_overlap(a: list[float], b: list[float]) -> float:
    """The reference's wmAP overlap, one pair at a time in float32 scalars: +1 in the
    intersection, not in the areas (0 where the denominator is not positive)."""
    f = np.float32
    a32, b32 = [f(v) for v in a], [f(v) for v in b]
    iw = max(min(a32[2], b32[2]) - max(a32[0], b32[0]) + f(1), f(0))
    ih = max(min(a32[3], b32[3]) - max(a32[1], b32[1]) + f(1), f(0))
    inter = iw * ih
    area_a = (a32[2] - a32[0]) * (a32[3] - a32[1])
    area_b = (b32[2] - b32[0]) * (b32[3] - b32[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


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


def test_reference_ap_overlap_by_hand() -> None:
    # two 30 x 30-pixel boxes, 10 pixels apart: intersection 20 x 30 = 600 under both overlaps
    a, b = [[0, 0, 29, 29]], [[10, 0, 39, 29]]
    assert box_iou(a, b)[0, 0] == 0.5  # 600 / (900 + 900 - 600): not a wmAP match (> 0.5)
    assert oi_reference_ap_overlap(a, b)[0, 0] == pytest.approx(600 / (841 + 841 - 600))  # 0.555
    # 100-pixel boxes 34 pixels apart: 6600 / 13400 = 0.4925 against 6600 / 13002 = 0.5076
    a, b = [[0, 0, 99, 99]], [[34, 0, 133, 99]]
    assert box_iou(a, b)[0, 0] == pytest.approx(6600 / 13400)
    assert oi_reference_ap_overlap(a, b)[0, 0] == pytest.approx(6600 / 13002)
    # identical boxes overlap by more than 1; the half box of test_hand_values: 50 / 67
    assert oi_reference_ap_overlap([[0, 0, 9, 9]], [[0, 0, 9, 9]])[0, 0] == pytest.approx(100 / 62)
    assert oi_reference_ap_overlap([[0, 0, 9, 9]], [[0, 0, 4, 9]])[0, 0] == pytest.approx(50 / 67)
    # one pixel apart: nothing; touching at one pixel column: that column
    assert oi_reference_ap_overlap([[0, 0, 9, 9]], [[10, 0, 19, 9]])[0, 0] == 0
    assert oi_reference_ap_overlap([[0, 0, 9, 9]], [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 152)
    # tiny boxes: the formula's denominator is <= 0 (2 x 3 boxes: 6 + 6 - 12); no match
    assert oi_reference_ap_overlap([[0, 0, 2, 3]], [[0, 0, 2, 3]])[0, 0] == 0
    assert oi_reference_ap_overlap([[0, 0, 1, 1]], [[0, 0, 1, 1]])[0, 0] == 0
    assert oi_reference_ap_overlap(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)


def test_reference_ap_overlap_is_float32() -> None:
    # float32 rounds this pair to exactly 0.5 (no match); float64 would say 0.50000003 (a match)
    a = np.array([[0, 0, 330.02435, 21.04063]], dtype=np.float32)
    b = np.array([[120.99041, 0, 451.01477, 21.04063]], dtype=np.float32)
    assert oi_reference_ap_overlap(a, b)[0, 0] == 0.5
    a64, b64 = a.astype(np.float64)[0], b.astype(np.float64)[0]
    inter = (a64[2] - b64[0] + 1) * (a64[3] - a64[1] + 1)
    area = (a64[2] - a64[0]) * (a64[3] - a64[1])
    assert inter / (area + (b64[2] - b64[0]) * (b64[3] - b64[1]) - inter) > 0.5


def test_reference_ap_overlap_matches_a_literal_loop() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (30, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 30, (30, 2))], 1)
    xy = rng.uniform(0, 50, (20, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 30, (20, 2))], 1)
    overlap = oi_reference_ap_overlap(a, b)
    expected = [[literal_reference_overlap(list(x), list(y)) for y in b] for x in a]
    assert overlap.tolist() == expected  # bit for bit, float32 throughout
    # never stricter than the +1 IoU, where the formula is meaningful (sides of 3 pixels or more)
    big_a = np.minimum(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]) >= 3
    big_b = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= 3
    assert (overlap >= box_iou(a, b) - 1e-6)[big_a][:, big_b].all()
