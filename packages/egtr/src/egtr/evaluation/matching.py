"""Ground truth and predicted triplets of one image, and the triplet hit test of the protocols.

A predicted triplet hits a ground-truth triplet when subject class, predicate and object class
are equal and both boxes overlap with IoU >= the threshold (+1-pixel convention, original-image
pixels). Hits are computed for all pairs at once as a ``[G, T]`` matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from egtr.evaluation.boxes import box_iou

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _array(value: Any, dtype: type[np.generic], cols: int | None = None) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=dtype)
    return array.reshape(-1, cols) if cols is not None else array.reshape(-1)


@dataclass(frozen=True)
class GroundTruth:
    """One image's annotations: boxes ``[M, 4]`` xyxy in original pixels, labels ``[M]`` and
    relations ``[R, 3]`` ``(subject, object, predicate)``.

    Identical ``(subject, object, predicate)`` rows are counted once (the reference builds a dense
    relation target, which merges them); distinct boxes with the same labels stay distinct.
    """

    boxes: FloatArray
    labels: IntArray
    rels: IntArray

    @classmethod
    def create(cls, boxes: Any, labels: Any, rels: Any) -> GroundTruth:
        """From arrays or tensors; relations are de-duplicated."""
        rel_array = _array(rels, np.int64, 3)
        if len(rel_array):
            rel_array = np.unique(rel_array, axis=0)
        return cls(_array(boxes, np.float64, 4), _array(labels, np.int64), rel_array)

    @classmethod
    def from_target(cls, target: Mapping[str, Any]) -> GroundTruth:
        """From a data set target (``boxes_xyxy_orig``, ``class_labels``, ``rels``)."""
        return cls.create(target["boxes_xyxy_orig"], target["class_labels"], target["rels"])

    @property
    def triplet_labels(self) -> IntArray:
        """``[R, 3]``: subject class, predicate, object class of each relation."""
        return np.stack(
            [self.labels[self.rels[:, 0]], self.rels[:, 2], self.labels[self.rels[:, 1]]], axis=1
        ).reshape(-1, 3)


@dataclass(frozen=True)
class PredictedTriplets:
    """One image's ranked triplets: per-query ``boxes [N, 4]`` (xyxy, original pixels) and
    ``labels [N]``, then ``subjects``/``objects`` (query indices), ``predicates`` and ``scores``
    ``[T]``, best first."""

    boxes: FloatArray
    labels: IntArray
    subjects: IntArray
    objects: IntArray
    predicates: IntArray
    scores: FloatArray

    @classmethod
    def create(
        cls,
        boxes: Any,
        labels: Any,
        subjects: Any,
        objects: Any,
        predicates: Any,
        scores: Any | None = None,
    ) -> PredictedTriplets:
        """From arrays or tensors (``scores`` default to a decreasing sequence)."""
        subj = _array(subjects, np.int64)
        score_array = (
            _array(scores, np.float64) if scores is not None else -np.arange(len(subj), dtype=float)
        )
        return cls(
            _array(boxes, np.float64, 4),
            _array(labels, np.int64),
            subj,
            _array(objects, np.int64),
            _array(predicates, np.int64),
            score_array,
        )

    def __len__(self) -> int:
        return len(self.subjects)

    def head(self, k: int) -> PredictedTriplets:
        """The first ``k`` triplets."""
        return PredictedTriplets(
            self.boxes,
            self.labels,
            self.subjects[:k],
            self.objects[:k],
            self.predicates[:k],
            self.scores[:k],
        )

    @property
    def triplet_labels(self) -> IntArray:
        """``[T, 3]``: subject class, predicate, object class of each triplet."""
        return np.stack(
            [self.labels[self.subjects], self.predicates, self.labels[self.objects]], axis=1
        ).reshape(-1, 3)


def label_matches(gt: GroundTruth, pred: PredictedTriplets) -> BoolArray:
    """``[G, T]``: the three labels agree."""
    gt_labels = gt.triplet_labels
    pred_labels = pred.triplet_labels
    equal: BoolArray = np.all(gt_labels[:, None, :] == pred_labels[None, :, :], axis=-1)
    return equal


def pair_ious(gt: GroundTruth, pred: PredictedTriplets) -> tuple[FloatArray, FloatArray]:
    """Subject and object IoUs ``[G, T]`` of every GT relation against every predicted triplet."""
    iou = box_iou(gt.boxes, pred.boxes)  # [M, N], computed once per box pair
    subj = iou[gt.rels[:, 0][:, None], pred.subjects[None, :]]
    obj = iou[gt.rels[:, 1][:, None], pred.objects[None, :]]
    return subj.reshape(len(gt.rels), len(pred)), obj.reshape(len(gt.rels), len(pred))


def triplet_hits(gt: GroundTruth, pred: PredictedTriplets, iou_threshold: float = 0.5) -> BoolArray:
    """``[G, T]``: predicted triplet ``t`` hits GT relation ``g`` (labels equal, both IoU >= thr)."""
    if len(gt.rels) == 0 or len(pred) == 0:
        return np.zeros((len(gt.rels), len(pred)), dtype=bool)
    subj, obj = pair_ious(gt, pred)
    return label_matches(gt, pred) & (subj >= iou_threshold) & (obj >= iou_threshold)


NO_HIT = np.iinfo(np.int64).max


def first_hit_rank(hits: BoolArray) -> IntArray:
    """``[G]``: rank of the first predicted triplet hitting each GT relation (:data:`NO_HIT` if
    none), so a GT relation is recalled at ``K`` exactly when its rank is ``< K``."""
    if hits.shape[1] == 0:
        return np.full(hits.shape[0], NO_HIT, dtype=np.int64)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), NO_HIT).astype(np.int64)
