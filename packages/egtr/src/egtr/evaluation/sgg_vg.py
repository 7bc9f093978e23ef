"""Visual Genome SGDet metrics: R@K, mR@K and zR@K (graph-constrained or not, by the triplets given).

- R@K: per image, GT relations hit by the top-K triplets / GT relations; mean over images with
  at least one GT relation (images without any are counted separately and skipped, as the
  reference cannot score them).
- mR@K: per predicate, the mean of that per-image recall restricted to the predicate's GT, over
  the images containing it; then the mean over predicates. ``mR@K`` divides by the predicates
  present in the evaluated ground truth; ``mR@K_all_predicates`` divides by all ``P`` (the
  reference's convention: an absent predicate counts as 0). On the full VG test split every
  predicate is present and the two agree.
- zR@K: the per-image recall of GT triplets ``(subject class, object class, predicate)`` never
  seen in training, over images with at least one such triplet.
- R@K_ceiling (graph-constrained evaluators only): the best graph-constrained R@K any model could
  reach, :func:`graph_constrained_ceiling`, averaged over the same images as R@K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from egtr.evaluation.matching import (
    GroundTruth,
    PredictedTriplets,
    first_hit_rank,
    triplet_hits,
)

DEFAULT_KS = (20, 50, 100)


def graph_constrained_ceiling(gt: GroundTruth, ks: Sequence[int]) -> npt.NDArray[np.float64]:
    """``[len(ks)]``: the ceiling of graph-constrained ``R@K`` on one image, ``min(K, D) / R``
    with ``D`` the distinct GT ``(subject, object)`` index pairs and ``R`` the (de-duplicated)
    GT relations.

    Rule (:func:`~egtr.evaluation.matching.triplet_hits`): a predicted triplet hits every GT
    triplet with the same three labels whose two boxes it overlaps with IoU >= the threshold,
    so one predicted triplet can hit several GT triplets. A graph-constrained prediction gives
    one predicate per pair of predicted objects. When each predicted object hits at most one GT
    object (no two same-label GT objects that one box can hit, :func:`ceiling_is_exact`) and each
    GT object is hit by at most one predicted object (no duplicate detections), a predicted
    triplet hits at most one GT triplet, distinct predicted pairs hit distinct GT pairs, and one
    predicate per pair hits at most one triplet of that GT pair; so at most ``min(K, D)`` of the
    ``R`` relations are hit. A perfect detector that gives ``min(K, D)`` GT pairs one of their
    predicates each reaches it: under those two conditions the ceiling is exact. Without them
    (clashing same-label boxes, or a model detecting one object twice and giving the two copies
    different predicates) a model can exceed it. Raises ``ValueError`` when ``gt`` has no
    relation.
    """
    if len(gt.rels) == 0:
        raise ValueError("the ceiling needs at least one GT relation")
    pairs = len(np.unique(gt.rels[:, :2], axis=0))
    k = np.asarray(ks, dtype=np.int64)
    ceiling: npt.NDArray[np.float64] = np.minimum(k, pairs) / len(gt.rels)
    return ceiling


def ceiling_is_exact(gt: GroundTruth, iou_threshold: float = 0.5) -> bool:
    """Whether no predicted box can hit two GT objects of ``gt`` with the same label (the first
    condition of :func:`graph_constrained_ceiling`). Returns the flag.

    Conservative test: for ``iou_threshold >= 0.5`` two same-label GT boxes clash when they
    overlap or touch (+1-pixel convention); with a gap between them no box reaches IoU >= 0.5
    with both (it would lie more than half outside one of them). Below 0.5 any two same-label
    objects clash.
    """
    if len(gt.boxes) < 2:
        return True
    same = gt.labels[:, None] == gt.labels[None, :]
    np.fill_diagonal(same, False)
    if iou_threshold < 0.5:
        return not bool(same.any())
    lt = np.maximum(gt.boxes[:, None, :2], gt.boxes[None, :, :2])
    rb = np.minimum(gt.boxes[:, None, 2:], gt.boxes[None, :, 2:])
    near = np.all(rb - lt + 1.0 >= 0.0, axis=-1)
    return not bool((same & near).any())


class SGGEvaluator:
    """Accumulates SGDet recall metrics over images; :meth:`compute` returns them.

    ``seen_triplets``: boolean ``[C(+1), C(+1), P]`` (``PredicateStatistics.seen_triplets``) indexed
    ``[subject class, object class, predicate]``; without it zR@K is not reported.
    ``graph_constrained``: the triplets given are graph-constrained (one predicate per pair);
    :meth:`compute` then also reports ``R@K_ceiling`` (:func:`graph_constrained_ceiling`) and
    ``ceiling_inexact_images`` (images with clashing same-label boxes, :func:`ceiling_is_exact`).
    """

    def __init__(
        self,
        num_predicates: int,
        *,
        ks: Sequence[int] = DEFAULT_KS,
        seen_triplets: Any | None = None,
        iou_threshold: float = 0.5,
        predicate_names: Sequence[str] | None = None,
        graph_constrained: bool = False,
    ) -> None:
        if not ks or any(k <= 0 for k in ks):
            raise ValueError(f"ks must be positive, got {ks}")
        self.num_predicates = num_predicates
        self.ks = tuple(int(k) for k in ks)
        self.iou_threshold = iou_threshold
        self.graph_constrained = graph_constrained
        self.predicate_names = (
            list(predicate_names)
            if predicate_names is not None
            else [f"predicate_{i}" for i in range(num_predicates)]
        )
        if len(self.predicate_names) != num_predicates:
            raise ValueError(f"{len(self.predicate_names)} predicate names for {num_predicates}")
        self.seen_triplets: npt.NDArray[np.bool_] | None = None
        if seen_triplets is not None:
            seen = seen_triplets
            if hasattr(seen, "detach"):
                seen = seen.detach().cpu().numpy()
            self.seen_triplets = np.asarray(seen, dtype=bool)
            if self.seen_triplets.ndim != 3 or self.seen_triplets.shape[2] != num_predicates:
                raise ValueError(
                    f"seen_triplets must be [C, C, {num_predicates}], got {self.seen_triplets.shape}"
                )
        self._k = np.asarray(self.ks, dtype=np.int64)
        self._recalls: list[npt.NDArray[np.float64]] = []
        self._zero_shot: list[npt.NDArray[np.float64]] = []
        self._ceilings: list[npt.NDArray[np.float64]] = []
        self.ceiling_inexact_images = 0
        self._predicate_sum = np.zeros((num_predicates, len(self.ks)))
        self._predicate_images = np.zeros(num_predicates, dtype=np.int64)
        self.images_without_relations = 0

    def add(self, gt: GroundTruth, pred: PredictedTriplets) -> dict[str, float] | None:
        """Score one image; returns its ``R@K`` (``None`` when it has no GT relation)."""
        if len(gt.rels) == 0:
            self.images_without_relations += 1
            return None
        top = pred.head(max(self.ks))
        hit_at = first_hit_rank(triplet_hits(gt, top, self.iou_threshold))[:, None] < self._k
        recall = hit_at.mean(axis=0)
        self._recalls.append(recall)
        if self.graph_constrained:
            self._ceilings.append(graph_constrained_ceiling(gt, self.ks))
            self.ceiling_inexact_images += not ceiling_is_exact(gt, self.iou_threshold)

        predicates = gt.rels[:, 2]
        counts = np.bincount(predicates, minlength=self.num_predicates)
        sums = np.zeros((self.num_predicates, len(self.ks)))
        np.add.at(sums, predicates, hit_at.astype(np.float64))
        present = counts > 0
        self._predicate_sum[present] += sums[present] / counts[present, None]
        self._predicate_images[present] += 1

        if self.seen_triplets is not None:
            labels = gt.triplet_labels  # subject class, predicate, object class
            seen = self.seen_triplets[labels[:, 0], labels[:, 2], labels[:, 1]]
            if not seen.all():
                self._zero_shot.append(hit_at[~seen].mean(axis=0))
        return {f"R@{k}": float(r) for k, r in zip(self.ks, recall, strict=True)}

    def compute(self) -> dict[str, Any]:
        """``R@K`` (each followed by ``R@K_ceiling`` when ``graph_constrained``), ``mR@K``,
        ``mR@K_all_predicates``, ``zR@K`` (with ``seen_triplets``), per-predicate recalls and
        image counts. Metrics without any image are NaN."""
        result: dict[str, Any] = {}
        recalls = np.asarray(self._recalls).reshape(-1, len(self.ks))
        present = self._predicate_images > 0
        per_predicate = self._predicate_sum / np.maximum(self._predicate_images, 1)[:, None]
        ceilings = np.asarray(self._ceilings).reshape(-1, len(self.ks))
        for index, k in enumerate(self.ks):
            result[f"R@{k}"] = _mean(recalls[:, index])
            if self.graph_constrained:
                result[f"R@{k}_ceiling"] = _mean(ceilings[:, index])
        for index, k in enumerate(self.ks):
            result[f"mR@{k}"] = _mean(per_predicate[present, index])
        for index, k in enumerate(self.ks):
            result[f"mR@{k}_all_predicates"] = (
                float(per_predicate[present, index].sum() / self.num_predicates)
                if present.any()
                else math.nan
            )
        if self.seen_triplets is not None:
            zero_shot = np.asarray(self._zero_shot).reshape(-1, len(self.ks))
            for index, k in enumerate(self.ks):
                result[f"zR@{k}"] = _mean(zero_shot[:, index])
            result["zero_shot_images"] = len(self._zero_shot)
        result["images"] = len(self._recalls)
        result["images_without_relations"] = self.images_without_relations
        if self.graph_constrained:
            result["ceiling_inexact_images"] = self.ceiling_inexact_images
        result["predicates_present"] = int(present.sum())
        result["per_predicate"] = {
            name: (
                {f"R@{k}": float(per_predicate[i, j]) for j, k in enumerate(self.ks)}
                | {"images": int(self._predicate_images[i])}
            )
            for i, name in enumerate(self.predicate_names)
            if present[i]
        }
        return result


def _mean(values: npt.NDArray[np.float64]) -> float:
    return float(values.mean()) if values.size else math.nan
