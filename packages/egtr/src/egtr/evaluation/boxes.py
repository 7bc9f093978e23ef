"""Box geometry of the SGG protocols: IoU with the +1-pixel convention, union boxes, and the
Open Images reference's AP overlap.

The protocols (Visual Genome SGDet, Open Images V6) treat ``(x1, y1, x2, y2)`` as inclusive pixel
coordinates: a box is ``x2 - x1 + 1`` wide. Applied to continuous boxes this makes small boxes
overlap a little more than the plain IoU would say. One exception: the Open Images wmAP of the
reference adds the pixel to the intersection only (:func:`oi_reference_ap_overlap`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU ``[N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` (+1 convention)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + 1.0, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def paired_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Element-wise IoU ``[N]`` of ``a[i]`` with ``b[i]`` (+1 convention)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    wh = np.clip(rb - lt + 1.0, 0.0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a) + box_area(b) - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def box_area(boxes: npt.ArrayLike) -> FloatArray:
    """Areas ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of xyxy boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)


def union_boxes(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """The smallest box holding ``a[i]`` and ``b[i]`` (the phrase box of a triplet)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])], axis=1)


def oi_reference_ap_overlap(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise overlap ``[N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` as the Open Images
    reference computes it for wmAP_rel / wmAP_phr (not an IoU in the usual sense).

    Why it exists: the Open Images V6 numbers of the literature (EGTR's included) come from the
    PySGG-derived ``ap_eval``, whose box overlap adds the +1 pixel to the intersection's width and
    height but not to the two areas, and computes in float32::

        inter = max(min(x2, x2') - max(x1, x1') + 1, 0) * max(min(y2, y2') - max(y1, y1') + 1, 0)
        overlap = inter / ((x2 - x1) * (y2 - y1) + (x2' - x1') * (y2' - y1') - inter)

    It is larger than :func:`box_iou` (most for small boxes; two identical 10 x 10-pixel boxes
    ``[0, 0, 9, 9]`` overlap by 100 / 62), so it is only used, by default, in the AP of
    :class:`egtr.evaluation.oi.OIEvaluator`, where the protocol's match is ``overlap > 0.5``.

    Every step runs in float32 in the reference's order (inputs are cast to float32 first); the
    result is returned as float64 holding exactly those float32 values. Where the denominator is
    <= 0 (only when both boxes are under about 3 pixels a side) the reference formula gives a
    negative, infinite or NaN value; this function returns 0 there (no match).

    Returns:
        ``[N, M]`` float64 overlaps, ``>= 0`` and possibly above 1.

    Raises:
        ValueError: when an input cannot be reshaped to ``[-1, 4]``.
    """
    a32 = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b32 = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    one = np.float32(1.0)
    lt = np.maximum(a32[:, None, :2], b32[None, :, :2])
    rb = np.minimum(a32[:, None, 2:], b32[None, :, 2:])
    wh = np.clip(rb - lt + one, np.float32(0.0), None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a32[:, 2] - a32[:, 0]) * (a32[:, 3] - a32[:, 1])
    area_b = (b32[:, 2] - b32[:, 0]) * (b32[:, 3] - b32[:, 1])
    denominator = area_a[:, None] + area_b[None, :] - inter
    overlap = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter, denominator, out=overlap, where=denominator > 0)
    return overlap.astype(np.float64)
