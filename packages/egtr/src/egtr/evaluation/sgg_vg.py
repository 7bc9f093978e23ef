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


class SGGEvaluator:
    """Accumulates SGDet recall metrics over images; :meth:`compute` returns them.

    ``seen_triplets``: boolean ``[C(+1), C(+1), P]`` (``PredicateStatistics.seen_triplets``) indexed
    ``[subject class, object class, predicate]``; without it zR@K is not reported.
    """

    def __init__(
        self,
        num_predicates: int,
        *,
        ks: Sequence[int] = DEFAULT_KS,
        seen_triplets: Any | None = None,
        iou_threshold: float = 0.5,
        predicate_names: Sequence[str] | None = None,
    ) -> None:
        if not ks or any(k <= 0 for k in ks):
            raise ValueError(f"ks must be positive, got {ks}")
        self.num_predicates = num_predicates
        self.ks = tuple(int(k) for k in ks)
        self.iou_threshold = iou_threshold
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
        """``R@K``, ``mR@K``, ``mR@K_all_predicates``, ``zR@K`` (with ``seen_triplets``),
        per-predicate recalls and image counts. Metrics without any image are NaN."""
        result: dict[str, Any] = {}
        recalls = np.asarray(self._recalls).reshape(-1, len(self.ks))
        present = self._predicate_images > 0
        per_predicate = self._predicate_sum / np.maximum(self._predicate_images, 1)[:, None]
        for index, k in enumerate(self.ks):
            result[f"R@{k}"] = _mean(recalls[:, index])
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
