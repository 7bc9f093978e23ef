"""Losses against hand computations: focal, L1, GIoU, smoothing targets, sampling, weights."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from egtr.training import (
    HungarianMatcher,
    Match,
    RelationSampling,
    SceneGraphCriterion,
    box_losses,
    default_config,
    focal_loss,
    match_uncertainty,
    relation_targets,
    sample_relation_entries,
)
from egtr.training.trainer import build_criterion

C_MIN = 2 * 0.75 * math.log(1e-8) - 2


def _match(queries: list[int], targets: list[int], costs: list[float]) -> Match:
    return Match(torch.tensor(queries), torch.tensor(targets), torch.tensor(costs))


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]])  # 1 image, 2 queries, 2 classes
    targets = [{"class_labels": torch.tensor([1]), "boxes": torch.zeros(1, 4)}]
    matches = [_match([0], [0], [0.0])]  # query 0 <-> box 0 of class 1

    def term(x: float, t: int) -> float:
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        a_t = 0.25 if t else 0.75
        return -a_t * (1 - p_t) ** 2 * math.log(p_t)

    expected = term(2.0, 0) + term(-1.0, 1) + term(0.5, 0) + term(0.0, 0)
    got = focal_loss(logits, targets, matches, num_boxes=2.0)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)


def test_l1_and_giou_by_hand() -> None:
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.3, 0.5, 0.2, 0.2]]])
    gt = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2]])
    targets = [{"class_labels": torch.tensor([0, 1]), "boxes": gt}]
    matches = [_match([0, 2], [0, 1], [0.0, 0.0])]
    l1, giou = box_losses(boxes, targets, matches, num_boxes=2.0)
    # pair 1: x shifted by 0.1 -> L1 0.1; IoU 0.02/0.06 = 1/3, hull 0.3x0.2 = union -> GIoU 1/3
    # pair 2: x shifted by 0.4 -> L1 0.4; disjoint, hull 0.6x0.2 = 0.12, union 0.08 -> GIoU -1/3
    assert l1.item() == pytest.approx((0.1 + 0.4) / 2, abs=1e-6)
    assert giou.item() == pytest.approx(((1 - 1 / 3) + (1 + 1 / 3)) / 2, abs=1e-6)


def test_uncertainty_and_smoothed_targets() -> None:
    assert HungarianMatcher().perfect_match_cost == pytest.approx(C_MIN)
    assert pytest.approx(-29.63, abs=5e-3) == C_MIN
    u = match_uncertainty(torch.tensor([C_MIN, C_MIN - math.log(1e-14 / (1 - 1e-14)), 20.0]), C_MIN)
    assert u[0].item() == pytest.approx(1e-14, rel=1e-3)  # perfect match: alpha
    assert u[1].item() == pytest.approx(0.5, abs=1e-6)
    assert u[2].item() == pytest.approx(1.0, abs=1e-6)

    costs = [C_MIN, -20.0, -5.0]
    match = _match([3, 0, 1], [0, 1, 2], costs)  # box b -> query
    rels = torch.tensor([[0, 1, 2], [1, 2, 0], [0, 0, 1]])
    rt = relation_targets(match, rels, num_queries=4, num_predicates=3, perfect_cost=C_MIN)
    unc = {
        q: 1 / (1 + math.exp(-(c - C_MIN + math.log(1e-14 / (1 - 1e-14)))))
        for q, c in zip([3, 0, 1], costs, strict=True)
    }
    assert rt.target[3, 0, 2].item() == pytest.approx((1 - unc[3]) * (1 - unc[0]), rel=1e-5)
    assert rt.target[0, 1, 0].item() == pytest.approx((1 - unc[0]) * (1 - unc[1]), rel=1e-5)
    assert rt.target[3, 3, 1].item() == pytest.approx(1.0)  # perfect match: target ~ 1
    assert int(rt.positive.sum()) == 3
    assert float(rt.target.sum()) == pytest.approx(float(rt.target[rt.positive].sum()))
    assert rt.matched.tolist() == [True, True, False, True]
    assert rt.connected.nonzero().tolist() == [[0, 1], [3, 0], [3, 3]]


def test_triplets_of_unmatched_boxes_are_dropped() -> None:
    match = _match([1], [0], [C_MIN])  # box 1 unmatched (more boxes than queries)
    rt = relation_targets(match, torch.tensor([[0, 1, 0], [0, 0, 1]]), 2, 2, C_MIN)
    assert rt.positive.nonzero().tolist() == [[1, 1, 1]]


def _sampling_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, p = 5, 3
    logits = torch.arange(n * n * p, dtype=torch.float32).reshape(n, n, p)
    logits = logits[torch.randperm(n, generator=torch.Generator().manual_seed(0))]  # shuffle rows
    positive = torch.zeros(n, n, p, dtype=torch.bool)
    positive[0, 1, 2] = positive[2, 0, 0] = True
    matched = torch.tensor([True, True, True, False, False])
    return logits, positive, matched


def test_sampling_counts_and_hard_negatives() -> None:
    logits, positive, matched = _sampling_case()
    index = sample_relation_entries(
        logits, positive, matched, negatives_ratio=2, nonmatching_ratio=3
    )
    flat_pos = positive.reshape(-1)
    both = (matched[:, None] & matched[None, :]).unsqueeze(-1).expand_as(positive).reshape(-1)
    flat = logits.reshape(-1)
    assert len(index) == 2 + 4 + 6
    assert len(set(index.tolist())) == len(index)
    chosen = set(index.tolist())
    assert set(flat_pos.nonzero().squeeze(1).tolist()) <= chosen
    negatives = (both & ~flat_pos).nonzero().squeeze(1)
    top_neg = negatives[flat[negatives].argsort(descending=True)[:4]]
    assert set(top_neg.tolist()) <= chosen
    outside = (~both).nonzero().squeeze(1)
    top_out = outside[flat[outside].argsort(descending=True)[:6]]
    assert set(top_out.tolist()) <= chosen
    # random non-matching entries (Open Images): same count, all drawn from the right set
    torch.manual_seed(1)
    rand = sample_relation_entries(logits, positive, matched, 2, 3, nonmatching_largest=False)
    picked = (
        set(rand.tolist()) - set(flat_pos.nonzero().squeeze(1).tolist()) - set(top_neg.tolist())
    )
    assert len(rand) == 12
    assert len(picked) == 6
    assert picked <= set(outside.tolist())
    # ratios larger than the candidates: capped; no positives: nothing at all
    capped = sample_relation_entries(logits, positive, matched, 100, 100)
    assert len(capped) == logits.numel()
    none = sample_relation_entries(logits, torch.zeros_like(positive), matched)
    assert none.numel() == 0


def _outputs(seed: int = 0, n: int = 4, c: int = 3, p: int = 2, layers: int = 0) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [
            torch.rand(1, n, 2, generator=gen) * 0.5 + 0.25,
            torch.rand(1, n, 2, generator=gen) * 0.2 + 0.1,
        ],
        -1,
    )
    out = SimpleNamespace(
        logits=torch.randn(1, n, c, generator=gen),
        pred_boxes=boxes,
        rel_logits=torch.randn(1, n, n, p, generator=gen),
        connectivity_logits=torch.randn(1, n, n, generator=gen),
    )
    if layers:
        out.auxiliary_logits = torch.randn(1, layers, n, c, generator=gen)
        out.auxiliary_pred_boxes = boxes.unsqueeze(1).expand(1, layers, n, 4).clone()
    return out


TARGETS = [
    {
        "class_labels": torch.tensor([0, 2]),
        "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2], [0.6, 0.6, 0.2, 0.3]]),
        "rels": torch.tensor([[0, 1, 1]]),
    }
]


def test_relation_and_connectivity_losses_by_hand() -> None:
    crit = SceneGraphCriterion(sampling=RelationSampling(1, 1))
    out = _outputs()
    result = crit(out, TARGETS)
    match = crit.matcher(out.logits, out.pred_boxes, TARGETS)[0]
    rt = relation_targets(match, TARGETS[0]["rels"], 4, 2, C_MIN)
    index = sample_relation_entries(out.rel_logits[0], rt.positive, rt.matched, 1, 1)
    assert len(index) == 3  # 1 positive, 1 hard negative, 1 non-matching
    expected = F.binary_cross_entropy_with_logits(
        out.rel_logits[0].reshape(-1)[index], rt.target.reshape(-1)[index]
    )
    assert result.components["rel"].item() == pytest.approx(expected.item(), rel=1e-6)
    conn_target = torch.zeros(1, 4, 4)
    q = {int(t): int(qq) for qq, t in zip(match.queries, match.targets, strict=True)}
    conn_target[0, q[0], q[1]] = 1
    expected_conn = F.binary_cross_entropy_with_logits(out.connectivity_logits, conn_target)
    assert result.components["connectivity"].item() == pytest.approx(expected_conn.item(), rel=1e-6)
    # validation mode: every entry
    full = crit(out, TARGETS, sample_relations=False).components["rel"]
    all_entries = F.binary_cross_entropy_with_logits(out.rel_logits[0], rt.target)
    assert full.item() == pytest.approx(all_entries.item(), rel=1e-6)


def test_total_loss_weights_vg_oi_and_auxiliary() -> None:
    out = _outputs(layers=2)
    for dataset, conn_weight in (("vg", 30.0), ("oi", 90.0)):
        result = build_criterion(default_config(dataset, "egtr"))(out, TARGETS)
        c = result.components
        assert set(c) == {"ce", "bbox", "giou", "rel", "connectivity"}
        expected = 2 * c["ce"] + 5 * c["bbox"] + 2 * c["giou"] + 15 * c["rel"]
        expected = expected + conn_weight * c["connectivity"]
        assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    stage_a = build_criterion(default_config("vg", "detector"))(out, TARGETS)
    c = stage_a.components
    assert set(c) == {"ce", "bbox", "giou", "ce_0", "bbox_0", "giou_0", "ce_1", "bbox_1", "giou_1"}
    total = sum(w * c[f"{k}{s}"].item() for s in ("", "_0", "_1")
                for k, w in (("ce", 2), ("bbox", 5), ("giou", 2)))  # fmt: skip
    assert stage_a.loss.item() == pytest.approx(total, rel=1e-6)


def test_relation_loss_without_positives_keeps_the_graph() -> None:
    out = _outputs()
    out.rel_logits.requires_grad_(True)
    targets = [{**TARGETS[0], "rels": torch.zeros(0, 3, dtype=torch.long)}]
    result = SceneGraphCriterion()(out, targets)
    assert result.components["rel"].item() == 0.0
    torch.autograd.backward(result.loss)
    assert out.rel_logits.grad is not None
    assert float(out.rel_logits.grad.abs().sum()) == 0.0


def test_missing_outputs_are_reported() -> None:
    out = _outputs()
    del out.rel_logits
    with pytest.raises(ValueError, match="rel_logits"):
        SceneGraphCriterion()(out, TARGETS)
