"""Hungarian matching of object queries to ground-truth boxes (cost = focal class + L1 + GIoU).

Besides the assignment, the matcher returns each matched pair's cost: EGTR turns it into the
uncertainty of the matched query (relation-label smoothing, :mod:`egtr.training.losses`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

from egtr.data.base import Target

_LOG_EPS = 1e-8  # inside the logs of the focal class cost, as Deformable DETR


@dataclass(frozen=True)
class Match:
    """One image's assignment: ``queries[k]`` is matched to ground-truth box ``targets[k]``.

    ``costs[k]`` is that pair's total matching cost. Sorted by query index.
    """

    queries: Tensor  # LongTensor [K]
    targets: Tensor  # LongTensor [K]
    costs: Tensor  # FloatTensor [K]

    def __len__(self) -> int:
        return int(self.queries.numel())


def focal_class_cost(probs: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Focal classification cost ``[N, M]`` of predicting ``labels`` (``[M]``) with ``probs`` (``[N, C]``).

    ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` at the target class.
    """
    p = probs[:, labels]
    positive = alpha * (1 - p).pow(gamma) * -torch.log(p + _LOG_EPS)
    negative = (1 - alpha) * p.pow(gamma) * -torch.log(1 - p + _LOG_EPS)
    return positive - negative


class HungarianMatcher:
    """Minimum-cost one-to-one assignment of queries to ground-truth boxes, per image.

    Cost of query ``i`` for box ``j``: ``class_cost * focal(i, j) + bbox_cost * L1(i, j)
    + giou_cost * (-GIoU(i, j))`` with boxes in normalised ``(cx, cy, w, h)``.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @property
    def perfect_match_cost(self) -> float:
        """The cost of a perfect prediction (probability 1, exact box): the lowest possible cost.

        ``class_cost * (1-alpha) * log(1e-8) - giou_cost`` (about -29.63 with the defaults).
        """
        return self.class_cost * (1 - self.focal_alpha) * math.log(_LOG_EPS) - self.giou_cost

    @torch.no_grad()
    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor
    ) -> Tensor:
        """Cost ``[N, M]`` of one image's ``N`` queries against its ``M`` ground-truth boxes."""
        probs = logits.float().sigmoid()
        boxes = boxes.float()
        target_boxes = target_boxes.float().to(boxes.device)
        labels = labels.to(probs.device)
        cost_class = focal_class_cost(probs, labels, self.focal_alpha, self.focal_gamma)
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        giou: Tensor = generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        return self.class_cost * cost_class + self.bbox_cost * cost_bbox - self.giou_cost * giou

    @torch.no_grad()
    def match_one(
        self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor
    ) -> Match:
        """Match one image (``logits [N, C]``, ``boxes [N, 4]``; ``labels [M]``, ``target_boxes [M, 4]``).

        Returns the optimal one-to-one :class:`Match` (query indices, target indices, costs);
        empty when the image has no targets. Raises ``ValueError`` when the cost matrix has
        NaN or infinite entries (diverged predictions or invalid ground-truth boxes).
        """
        device = logits.device
        if labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Match(empty, empty.clone(), torch.zeros(0, device=device))
        cost = self.cost_matrix(logits, boxes, labels, target_boxes)
        if not bool(torch.isfinite(cost).all()):
            raise ValueError(
                "matching cost has NaN or infinite entries (diverged predictions or invalid "
                "ground-truth boxes)"
            )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        queries = torch.as_tensor(rows.astype(np.int64), device=device)
        targets = torch.as_tensor(cols.astype(np.int64), device=device)
        return Match(queries, targets, cost[queries, targets])

    def __call__(self, logits: Tensor, boxes: Tensor, targets: Sequence[Target]) -> list[Match]:
        """Match every image of a batch: ``logits [B, N, C]``, ``boxes [B, N, 4]``, targets per
        image (only ``class_labels`` and ``boxes`` are read); returns one `Match` per image."""
        if logits.shape[0] != len(targets):
            raise ValueError(f"{logits.shape[0]} predictions but {len(targets)} targets")
        return [
            self.match_one(logits[b], boxes[b], target["class_labels"], target["boxes"])
            for b, target in enumerate(targets)
        ]
