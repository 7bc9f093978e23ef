"""Open Images V6 SGDet metrics: microR@50, wmAP_rel, wmAP_phr and score_wtd.

Candidates (:func:`oi_candidates`): every ordered query pair (the diagonal included, as the
protocol), its two best predicates, scored ``s_subject * s_object * rel``; the best 100 overall,
dropping scores <= 1e-5.

- microR@50: GT relations hit by the first 50 candidates, summed over images, over all GT
  relations (hit: labels equal, both IoU >= 0.5).
- wmAP_rel / wmAP_phr: per predicate, VOC AP (all-point interpolation) of the candidates with
  that predicate over the whole split, weighted by the predicate's GT count. A candidate is a
  true positive when its best-overlapping GT relation (same predicate and classes) overlaps by
  more than 0.5 and was not taken by a higher-scored candidate; overlap is ``min(overlap_subject,
  overlap_object)`` (rel) or the overlap of the union boxes (phr). By default
  (``ap_overlap="reference"``) the box overlap is the reference protocol's
  :func:`~egtr.evaluation.boxes.oi_reference_ap_overlap` (+1 pixel in the intersection only,
  float32), so that the numbers compare with the literature; ``ap_overlap="consistent"`` uses the
  +1-pixel IoU of the rest of the protocol instead.
  Candidates are ranked with a stable sort (ties: image order, then candidate rank).
- score_wtd = 0.2 * microR@50 + 0.4 * wmAP_rel + 0.4 * wmAP_phr.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from egtr.evaluation.boxes import box_iou, oi_reference_ap_overlap, union_boxes
from egtr.evaluation.matching import (
    GroundTruth,
    PredictedTriplets,
    first_hit_rank,
    label_matches,
    triplet_hits,
)

FloatArray = npt.NDArray[np.float64]

#: Box overlaps of wmAP_rel / wmAP_phr: the reference protocol's (default) or the +1-pixel IoU.
AP_OVERLAPS = ("reference", "consistent")


def oi_candidates(
    obj_scores: Tensor,
    labels: Tensor,
    boxes: Tensor,
    rel: Tensor,
    *,
    top_predicates: int = 2,
    top_k: int = 100,
    min_score: float = 1e-5,
) -> PredictedTriplets:
    """The protocol's candidates from ``obj_scores [N]``, ``labels [N]``, ``boxes [N, 4]``
    (xyxy pixels) and ``rel [N, N, P]`` (relation probabilities times connectivity)."""
    n, _, num_pred = rel.shape
    keep_pred = min(top_predicates, num_pred)
    pair = (obj_scores.float()[:, None] * obj_scores.float()[None, :]).reshape(-1)
    rel_sorted = torch.sort(
        rel.float().reshape(n * n, num_pred), dim=-1, descending=True, stable=True
    )
    values = rel_sorted.values[:, :keep_pred] * pair[:, None]  # [N*N, keep_pred]
    flat = values.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[:top_k]
    order = order[flat[order] > min_score]
    pair_index = torch.div(order, keep_pred, rounding_mode="floor")
    predicates = rel_sorted.indices[:, :keep_pred].reshape(-1)[order]
    return PredictedTriplets.create(
        boxes,
        labels,
        torch.div(pair_index, n, rounding_mode="floor"),
        pair_index % n,
        predicates,
        flat[order],
    )


def voc_ap(recall: FloatArray, precision: FloatArray) -> float:
    """VOC AP with all-point interpolation: area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class OIEvaluator:
    """Accumulates Open Images V6 metrics over images; :meth:`compute` returns them.

    ``ap_overlap`` (one of :data:`AP_OVERLAPS`) picks the box overlap of wmAP_rel / wmAP_phr:
    ``"reference"`` (default) the reference protocol's, ``"consistent"`` the +1-pixel IoU that
    microR@50 uses. Raises ``ValueError`` for any other value.
    """

    def __init__(
        self,
        num_predicates: int,
        *,
        recall_k: int = 50,
        iou_threshold: float = 0.5,
        predicate_names: Sequence[str] | None = None,
        ap_overlap: str = "reference",
    ) -> None:
        if ap_overlap not in AP_OVERLAPS:
            raise ValueError(f"ap_overlap must be one of {AP_OVERLAPS}, got {ap_overlap!r}")
        self.ap_overlap = ap_overlap
        self.num_predicates = num_predicates
        self.recall_k = recall_k
        self.iou_threshold = iou_threshold
        self.predicate_names = (
            list(predicate_names)
            if predicate_names is not None
            else [f"predicate_{i}" for i in range(num_predicates)]
        )
        self._matched = 0
        self._num_gt = 0
        self._npos = np.zeros(num_predicates, dtype=np.int64)
        self._dets: list[dict[str, npt.NDArray[Any]]] = []
        self.images = 0

    def add(self, gt: GroundTruth, pred: PredictedTriplets) -> None:
        """Score one image's candidates (ranked, as :func:`oi_candidates` gives them)."""
        self.images += 1
        num_gt = len(gt.rels)
        hits = triplet_hits(gt, pred.head(self.recall_k), self.iou_threshold)
        self._matched += int((first_hit_rank(hits) < self.recall_k).sum())
        offset = self._num_gt
        self._num_gt += num_gt
        self._npos += np.bincount(gt.rels[:, 2], minlength=self.num_predicates)
        if len(pred) == 0:
            return
        if num_gt:
            overlap = oi_reference_ap_overlap if self.ap_overlap == "reference" else box_iou
            valid = label_matches(gt, pred).T  # [T, G]
            box_overlap = overlap(pred.boxes, gt.boxes)  # [N, M], once per box pair
            subj = box_overlap[pred.subjects[:, None], gt.rels[:, 0][None, :]]
            obj = box_overlap[pred.objects[:, None], gt.rels[:, 1][None, :]]
            rel_overlap = np.where(valid, np.minimum(subj, obj), 0.0)
            gt_union = union_boxes(gt.boxes[gt.rels[:, 0]], gt.boxes[gt.rels[:, 1]])
            pred_union = union_boxes(pred.boxes[pred.subjects], pred.boxes[pred.objects])
            phr_overlap = np.where(valid, overlap(pred_union, gt_union), 0.0)
            rel_best, phr_best = rel_overlap.argmax(1), phr_overlap.argmax(1)
            rel_ok = rel_overlap.max(1) > self.iou_threshold
            phr_ok = phr_overlap.max(1) > self.iou_threshold
        else:
            rel_best = phr_best = np.zeros(len(pred), dtype=np.int64)
            rel_ok = phr_ok = np.zeros(len(pred), dtype=bool)
        self._dets.append(
            {
                "predicate": pred.predicates.copy(),
                "score": pred.scores.astype(np.float64),
                "rel_gt": rel_best + offset,
                "rel_ok": rel_ok,
                "phr_gt": phr_best + offset,
                "phr_ok": phr_ok,
            }
        )

    def average_precisions(self, kind: str) -> FloatArray:
        """Per-predicate VOC AP ``[P]`` (``kind`` ``"rel"`` or ``"phr"``; 0 where no GT).
        Raises ``ValueError`` for another ``kind``."""
        if kind not in ("rel", "phr"):
            raise ValueError(f"kind must be 'rel' or 'phr', got {kind!r}")
        aps = np.zeros(self.num_predicates)
        if not self._dets:
            return aps
        predicate = np.concatenate([d["predicate"] for d in self._dets])
        score = np.concatenate([d["score"] for d in self._dets])
        best = np.concatenate([d[f"{kind}_gt"] for d in self._dets])
        ok = np.concatenate([d[f"{kind}_ok"] for d in self._dets])
        for c in np.flatnonzero(self._npos):
            rows = np.flatnonzero(predicate == c)
            rows = rows[np.argsort(-score[rows], kind="stable")]
            tp = np.zeros(len(rows), dtype=bool)
            candidates = np.flatnonzero(ok[rows])
            _, first = np.unique(best[rows][candidates], return_index=True)
            tp[candidates[first]] = True  # first (best-scored) claim of each GT relation
            tp_cum = np.cumsum(tp)
            fp_cum = np.cumsum(~tp)
            recall = tp_cum / float(self._npos[c])
            precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
            aps[c] = voc_ap(recall, precision)
        return aps

    def compute(self) -> dict[str, Any]:
        """``microR@50``, ``wmAP_rel``, ``wmAP_phr``, ``score_wtd``, unweighted ``mAP_rel`` /
        ``mAP_phr`` over the predicates present and ``mAP_rel_all_predicates`` /
        ``mAP_phr_all_predicates`` over all ``P`` (the reference's unweighted mAP: an absent
        predicate counts as AP 0), per-predicate APs and counts, and the ``ap_overlap`` used.
        Metrics without any GT relation are NaN."""
        result: dict[str, Any] = {}
        total = int(self._npos.sum())
        recall = self._matched / self._num_gt if self._num_gt else math.nan
        result[f"microR@{self.recall_k}"] = recall
        present = self._npos > 0
        per_predicate: dict[str, dict[str, float | int]] = {
            name: {"gt": int(self._npos[i])} for i, name in enumerate(self.predicate_names)
        }
        for kind in ("rel", "phr"):
            aps = self.average_precisions(kind)
            weighted = float((aps * self._npos).sum() / total) if total else math.nan
            result[f"wmAP_{kind}"] = weighted
            result[f"mAP_{kind}"] = float(aps[present].mean()) if total else math.nan
            result[f"mAP_{kind}_all_predicates"] = (
                float(aps.sum() / self.num_predicates) if total else math.nan
            )
            for i, name in enumerate(self.predicate_names):
                per_predicate[name][f"AP_{kind}"] = float(aps[i])
        result["score_wtd"] = 0.2 * recall + 0.4 * result["wmAP_rel"] + 0.4 * result["wmAP_phr"]
        result["ap_overlap"] = self.ap_overlap
        result["images"] = self.images
        result["gt_relations"] = total
        result["per_predicate"] = {
            name: values for name, values in per_predicate.items() if values["gt"]
        }
        return result
