"""Detection AP (COCO evaluation through pycocotools, the optional ``egtr[eval]`` extra).

Detections per image, as the protocols: ``"sigmoid_topk"`` (Visual Genome) — the top 100 of all
``N x C`` sigmoid class scores, each with its query's box; ``"per_query"`` (Open Images) — one
detection per query, its argmax class with the object score. COCO boxes are ``(x, y, x2 - x1,
y2 - y1)`` (COCO's own continuous IoU, as the Visual Genome reference), or with
``inclusive_boxes`` ``(x, y, x2 - x1 + 1, y2 - y1 + 1)`` for ground truth and detections alike (the
Open Images reference; COCO's IoU of such boxes is the +1-pixel IoU).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

DETECTION_MODES = ("sigmoid_topk", "per_query")


def top_detections(
    logits: Tensor, boxes: Tensor, *, k: int = 100
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top ``k`` of ``sigmoid(logits [N, C])``: ``(boxes [k, 4], labels, scores, queries)``.

    Ties keep the lower flat index (query-major) first.
    """
    num_classes = logits.shape[-1]
    probs = logits.float().sigmoid().reshape(-1)
    order = torch.sort(probs, descending=True, stable=True).indices[: min(k, probs.numel())]
    queries = torch.div(order, num_classes, rounding_mode="floor")
    return boxes[queries], order % num_classes, probs[order], queries


def _coco_api() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "detection AP needs pycocotools: pip install 'egtr[eval]' (or skip it with "
            "`egtr eval --no-detection-ap`)"
        ) from exc
    return COCO, COCOeval


def require_pycocotools() -> None:
    """Raise a clear ``ImportError`` now when pycocotools is missing."""
    _coco_api()


class DetectionEvaluator:
    """Collects GT boxes and detections per image; :meth:`compute` runs COCO evaluation.

    Boxes are xyxy in original pixels; labels are 0-based (stored as COCO category ``label + 1``).
    ``inclusive_boxes``: widths and heights ``x2 - x1 + 1`` (the Open Images reference) instead of
    ``x2 - x1`` (Visual Genome).
    """

    def __init__(self, num_classes: int, *, inclusive_boxes: bool = False) -> None:
        self.num_classes = num_classes
        self.inclusive_boxes = inclusive_boxes
        self._images: list[int] = []
        self._gts: list[dict[str, Any]] = []
        self._dets: list[dict[str, Any]] = []

    def add(
        self,
        image_id: int,
        gt_boxes: Any,
        gt_labels: Any,
        det_boxes: Any,
        det_labels: Any,
        det_scores: Any,
    ) -> None:
        """Add one image's ground truth and detections (arrays or tensors)."""
        self._images.append(int(image_id))
        for box, label in zip(_rows(gt_boxes), _flat(gt_labels), strict=True):
            bbox = self._coco_box(box)
            self._gts.append(
                {
                    "id": len(self._gts) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "bbox": bbox,
                    "area": max(bbox[2], 0.0) * max(bbox[3], 0.0),
                    "iscrowd": 0,
                }
            )
        for box, label, score in zip(
            _rows(det_boxes), _flat(det_labels), _flat(det_scores), strict=True
        ):
            self._dets.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "bbox": self._coco_box(box),
                    "score": float(score),
                }
            )

    def _coco_box(self, box: npt.NDArray[np.float64]) -> list[float]:
        """COCO ``[x, y, w, h]`` of one xyxy box (``+ 1`` on ``w``, ``h`` with inclusive boxes)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        pad = 1.0 if self.inclusive_boxes else 0.0
        return [x1, y1, x2 - x1 + pad, y2 - y1 + pad]

    def compute(self) -> dict[str, float]:
        """``AP`` (IoU .50:.95), ``AP50`` and ``AP75`` over the images added (NaN without GT)."""
        COCO, COCOeval = _coco_api()
        if not self._gts:
            return {"AP": math.nan, "AP50": math.nan, "AP75": math.nan}
        if not self._dets:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {
                "images": [{"id": image_id} for image_id in self._images],
                "categories": [{"id": c + 1, "name": str(c)} for c in range(self.num_classes)],
                "annotations": self._gts,
            }
            gt.createIndex()
            dt = gt.loadRes([dict(det) for det in self._dets])
            coco_eval = COCOeval(gt, dt, "bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [float(v) for v in coco_eval.stats[:3]]
        return {
            name: (value if value >= 0 else math.nan)
            for name, value in zip(("AP", "AP50", "AP75"), stats, strict=True)
        }


def _rows(values: Any) -> npt.NDArray[np.float64]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1, 4)


def _flat(values: Any) -> npt.NDArray[Any]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)
