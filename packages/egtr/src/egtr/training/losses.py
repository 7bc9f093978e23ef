"""EGTR's training losses: detection (focal, L1, GIoU), relations with adaptive label smoothing and
hard-negative sampling, and connectivity; combined by :class:`SceneGraphCriterion`.

Each loss is normalised within the micro-batch it sees (focal/L1/GIoU by the number of ground-truth
boxes, relation BCE by the number of sampled entries, connectivity by the number of pairs); the
trainer averages micro-batch losses over gradient accumulation and ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from egtr.data.base import Target
from egtr.training.matcher import HungarianMatcher, Match

# --------------------------------------------------------------------------- detection


def count_boxes(targets: Sequence[Target]) -> int:
    """Number of ground-truth boxes of a batch, at least 1 (the detection losses' normaliser)."""
    return max(sum(int(t["class_labels"].numel()) for t in targets), 1)


def focal_loss(
    logits: Tensor,
    targets: Sequence[Target],
    matches: Sequence[Match],
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Sigmoid focal loss over all ``[B, N, C]`` logits, summed and divided by ``num_boxes``.

    Matched queries target their box's class; every other query targets all-zeros (no
    "no-object" logit).
    """
    onehot = torch.zeros_like(logits)
    for b, (target, match) in enumerate(zip(targets, matches, strict=True)):
        labels = target["class_labels"].to(logits.device)[match.targets]
        onehot[b, match.queries, labels] = 1.0
    loss: Tensor = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum")
    return loss / num_boxes


def box_losses(
    boxes: Tensor, targets: Sequence[Target], matches: Sequence[Match], num_boxes: float
) -> tuple[Tensor, Tensor]:
    """L1 and GIoU losses (``1 - GIoU``) of the matched boxes (cxcywh), each summed / ``num_boxes``."""
    predicted = torch.cat([boxes[b, m.queries] for b, m in enumerate(matches)])
    wanted = torch.cat(
        [t["boxes"].to(boxes)[m.targets] for t, m in zip(targets, matches, strict=True)]
    )
    if predicted.numel() == 0:
        zero = boxes.sum() * 0.0
        return zero, zero.clone()
    l1 = F.l1_loss(predicted, wanted, reduction="sum") / num_boxes
    giou = generalized_box_iou(
        box_convert(predicted, "cxcywh", "xyxy"), box_convert(wanted, "cxcywh", "xyxy")
    )
    return l1, (1 - torch.diagonal(giou)).sum() / num_boxes


# --------------------------------------------------------------------------- relations


def match_uncertainty(costs: Tensor, perfect_cost: float, alpha: float = 1e-14) -> Tensor:
    """Uncertainty of matched queries, ``sigmoid(C - C_min + logit(alpha))`` (``alpha`` at ``C = C_min``)."""
    return torch.sigmoid(costs - perfect_cost + math.log(alpha / (1 - alpha)))


@dataclass(frozen=True)
class RelationTargets:
    """One image's relation supervision in query space.

    ``target [N, N, P]``: smoothed label ``(1-u_s)(1-u_o)`` at each ground-truth triplet, else 0;
    ``positive [N, N, P]``: where a triplet is; ``matched [N]``: queries matched to a box;
    ``connected [N, N]``: pairs linked by at least one predicate.
    """

    target: Tensor
    positive: Tensor
    matched: Tensor
    connected: Tensor = field(repr=False)


@torch.no_grad()
def relation_targets(
    match: Match,
    rels: Tensor,
    num_queries: int,
    num_predicates: int,
    perfect_cost: float,
    alpha: float = 1e-14,
    device: torch.device | None = None,
) -> RelationTargets:
    """Map ground-truth triplets ``rels [R, 3]`` (subject box, object box, predicate) onto queries.

    Triplets whose subject or object box was left unmatched (more boxes than queries) are dropped.
    """
    device = device if device is not None else match.queries.device
    query_of_box = torch.full((_num_boxes_hint(match, rels),), -1, dtype=torch.long, device=device)
    query_of_box[match.targets.to(device)] = match.queries.to(device)
    uncertainty = torch.zeros(num_queries, device=device)
    uncertainty[match.queries.to(device)] = match_uncertainty(
        match.costs.to(device).float(), perfect_cost, alpha
    )
    matched = torch.zeros(num_queries, dtype=torch.bool, device=device)
    matched[match.queries.to(device)] = True

    target = torch.zeros(num_queries, num_queries, num_predicates, device=device)
    positive = torch.zeros(
        num_queries, num_queries, num_predicates, dtype=torch.bool, device=device
    )
    connected = torch.zeros(num_queries, num_queries, device=device)
    rels = rels.to(device).long().reshape(-1, 3)
    if rels.numel():
        subj, obj = query_of_box[rels[:, 0]], query_of_box[rels[:, 1]]
        keep = (subj >= 0) & (obj >= 0)
        subj, obj, pred = subj[keep], obj[keep], rels[keep, 2]
        positive[subj, obj, pred] = True
        target[subj, obj, pred] = (1 - uncertainty[subj]) * (1 - uncertainty[obj])
        connected[subj, obj] = 1.0
    return RelationTargets(target, positive, matched, connected)


def _num_boxes_hint(match: Match, rels: Tensor) -> int:
    """Size of a box-index table covering every index used by ``match`` and ``rels``."""
    size = int(match.targets.max()) + 1 if len(match) else 0
    if rels.numel():
        size = max(size, int(rels[:, :2].max()) + 1)
    return size


def sample_relation_entries(
    logits: Tensor,
    positive: Tensor,
    matched: Tensor,
    negatives_ratio: int | None = 80,
    nonmatching_ratio: int | None = 80,
    negatives_largest: bool = True,
    nonmatching_largest: bool = True,
) -> Tensor:
    """Flat indices into ``logits [N, N, P]`` that the relation BCE is computed on.

    All positives; among matched x matched entries that are not positive, the ``negatives_ratio
    x |positives|`` with the largest logits (or random ones); among entries whose subject or object
    query is unmatched, ``nonmatching_ratio x |positives|`` by largest logit or at random (OI). None
    at all when the image has no positive. A ratio of ``None`` keeps every candidate.
    Random choices use the global torch RNG (saved with checkpoints).
    """
    flat_positive = positive.reshape(-1)
    num_positive = int(flat_positive.sum())
    if num_positive == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    pair_matched = matched[:, None] & matched[None, :]
    both = pair_matched.unsqueeze(-1).expand_as(positive).reshape(-1)
    flat_logits = logits.detach().reshape(-1)
    chosen = [flat_positive.nonzero().squeeze(1)]
    for candidates, ratio, largest in (
        (both & ~flat_positive, negatives_ratio, negatives_largest),
        (~both, nonmatching_ratio, nonmatching_largest),
    ):
        index = candidates.nonzero().squeeze(1)
        if ratio is not None:
            k = min(ratio * num_positive, int(index.numel()))
            if largest:
                index = index[torch.topk(flat_logits[index], k).indices]
            else:
                index = index[torch.randperm(int(index.numel()))[:k].to(index.device)]
        chosen.append(index)
    return torch.cat(chosen)


# --------------------------------------------------------------------------- criterion


@dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss (the paper's VG values; connectivity 90 for OI)."""

    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    rel: float = 15.0
    connectivity: float = 30.0


@dataclass(frozen=True)
class RelationSampling:
    """Relation BCE sampling: ratios to the number of positives and how negatives are chosen."""

    negatives_ratio: int | None = 80
    nonmatching_ratio: int | None = 80
    negatives_largest: bool = True
    nonmatching_largest: bool = True  # False (random) for Open Images


@dataclass
class CriterionOutput:
    """Total (weighted) loss and its unweighted components (``ce``, ``bbox``, ``giou``, ``rel``,
    ``connectivity``; ``ce_0``... for auxiliary decoder layers)."""

    loss: Tensor
    components: dict[str, Tensor]


class SceneGraphCriterion:
    """Hungarian matching plus every EGTR loss, weighted into one scalar.

    ``relations=False`` is detector pre-training (stage A): detection losses only, normally with
    ``auxiliary=True`` (the same losses on every intermediate decoder layer, each re-matched).
    ``sample_relations=False`` computes the relation BCE on all entries (the reference does this
    for its validation loss).
    """

    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        weights: LossWeights | None = None,
        sampling: RelationSampling | None = None,
        *,
        relations: bool = True,
        auxiliary: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smoothing_alpha: float = 1e-14,
    ) -> None:
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weights = weights if weights is not None else LossWeights()
        self.sampling = sampling if sampling is not None else RelationSampling()
        self.relations = relations
        self.auxiliary = auxiliary
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.smoothing_alpha = smoothing_alpha

    def __call__(
        self, outputs: object, targets: Sequence[Target], *, sample_relations: bool = True
    ) -> CriterionOutput:
        logits = _field(outputs, "logits").float()
        boxes = _field(outputs, "pred_boxes").float()
        num_boxes = float(count_boxes(targets))
        components: dict[str, Tensor] = {}
        matches = self.matcher(logits, boxes, list(targets))
        components.update(self._detection(logits, boxes, targets, matches, num_boxes, ""))
        if self.auxiliary:
            aux_logits = _field(outputs, "auxiliary_logits").float()
            aux_boxes = _field(outputs, "auxiliary_pred_boxes").float()
            for layer in range(aux_logits.shape[1]):
                layer_logits, layer_boxes = aux_logits[:, layer], aux_boxes[:, layer]
                layer_matches = self.matcher(layer_logits, layer_boxes, list(targets))
                components.update(
                    self._detection(
                        layer_logits, layer_boxes, targets, layer_matches, num_boxes, f"_{layer}"
                    )
                )
        if self.relations:
            rel_logits = _field(outputs, "rel_logits").float()
            conn_logits = _field(outputs, "connectivity_logits").float()
            rel, conn = self._relations(rel_logits, conn_logits, targets, matches, sample_relations)
            components["rel"], components["connectivity"] = rel, conn
        loss = sum(
            (self._weight(name) * value for name, value in components.items()),
            start=logits.new_zeros(()),
        )
        return CriterionOutput(loss, components)

    def _weight(self, name: str) -> float:
        base = name.split("_")[0]
        return float(getattr(self.weights, base))

    def _detection(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: Sequence[Target],
        matches: Sequence[Match],
        num_boxes: float,
        suffix: str,
    ) -> dict[str, Tensor]:
        ce = focal_loss(logits, targets, matches, num_boxes, self.focal_alpha, self.focal_gamma)
        l1, giou = box_losses(boxes, targets, matches, num_boxes)
        return {f"ce{suffix}": ce, f"bbox{suffix}": l1, f"giou{suffix}": giou}

    def _relations(
        self,
        rel_logits: Tensor,
        conn_logits: Tensor,
        targets: Sequence[Target],
        matches: Sequence[Match],
        sample: bool,
    ) -> tuple[Tensor, Tensor]:
        batch, num_queries, _, num_predicates = rel_logits.shape
        perfect = self.matcher.perfect_match_cost
        s = self.sampling
        rel_terms: list[Tensor] = []
        conn_targets = torch.zeros_like(conn_logits)
        for b in range(batch):
            rel_t = relation_targets(
                matches[b],
                targets[b]["rels"],
                num_queries,
                num_predicates,
                perfect,
                self.smoothing_alpha,
                device=rel_logits.device,
            )
            conn_targets[b] = rel_t.connected
            logits_b = rel_logits[b].reshape(-1)
            if sample:
                index = sample_relation_entries(
                    rel_logits[b],
                    rel_t.positive,
                    rel_t.matched,
                    s.negatives_ratio,
                    s.nonmatching_ratio,
                    s.negatives_largest,
                    s.nonmatching_largest,
                )
                rel_terms.append(
                    F.binary_cross_entropy_with_logits(
                        logits_b[index], rel_t.target.reshape(-1)[index], reduction="none"
                    )
                )
            else:
                rel_terms.append(
                    F.binary_cross_entropy_with_logits(
                        logits_b, rel_t.target.reshape(-1), reduction="none"
                    )
                )
        entries = torch.cat(rel_terms)
        # keep every relation parameter in the graph even without positives (DDP needs it)
        rel = entries.mean() if entries.numel() else rel_logits.sum() * 0.0
        conn = F.binary_cross_entropy_with_logits(conn_logits, conn_targets)
        return rel, conn


def _field(outputs: object, name: str) -> Tensor:
    value = getattr(outputs, name, None)
    if value is None and isinstance(outputs, dict):
        value = outputs.get(name)
    if not isinstance(value, Tensor):
        raise ValueError(
            f"model outputs lack {name!r} (relations need the full model, auxiliary losses "
            "`output_auxiliary=True`)"
        )
    return value
