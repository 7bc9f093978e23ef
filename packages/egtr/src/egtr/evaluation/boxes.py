"""Box geometry of the SGG protocols: IoU with the +1-pixel convention, union boxes.

The protocols (Visual Genome SGDet, Open Images V6) treat ``(x1, y1, x2, y2)`` as inclusive pixel
coordinates: a box is ``x2 - x1 + 1`` wide. Applied to continuous boxes this makes small boxes
overlap a little more than the plain IoU would say.
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
