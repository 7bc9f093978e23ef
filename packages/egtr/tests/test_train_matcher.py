"""Hungarian matcher: cost matrix against a literal per-pair computation, assignment against brute
force over all permutations, returned costs, the perfect-match cost."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from egtr.training import HungarianMatcher


def _literal_cost(logit: list[float], box: list[float], label: int, gt: list[float]) -> float:
    """2 * focal cost + 5 * L1 + 2 * (-GIoU), written out for one query and one box."""
    p = 1 / (1 + math.exp(-logit[label]))
    focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    l1 = sum(abs(a - b) for a, b in zip(box, gt, strict=True))

    def corners(b: list[float]) -> tuple[float, float, float, float]:
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    ax1, ay1, ax2, ay2 = corners(box)
    bx1, by1, bx2, by2 = corners(gt)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    giou = inter / union - (hull - union) / hull
    return 2 * focal + 5 * l1 - 2 * giou


def _random_case(seed: int, n: int, m: int, c: int = 3) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen) * 2
    boxes = torch.cat(
        [torch.rand(n, 2, generator=gen) * 0.6 + 0.2, torch.rand(n, 2, generator=gen) * 0.3 + 0.05],
        dim=1,
    )
    labels = torch.randint(0, c, (m,), generator=gen)
    gt = torch.cat(
        [torch.rand(m, 2, generator=gen) * 0.6 + 0.2, torch.rand(m, 2, generator=gen) * 0.3 + 0.05],
        dim=1,
    )
    return logits, boxes, labels, gt


def test_cost_matrix_matches_literal_definition() -> None:
    logits, boxes, labels, gt = _random_case(0, 4, 3)
    cost = HungarianMatcher().cost_matrix(logits, boxes, labels, gt)
    for i, j in itertools.product(range(4), range(3)):
        expected = _literal_cost(
            logits[i].tolist(), boxes[i].tolist(), int(labels[j]), gt[j].tolist()
        )
        assert cost[i, j].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("seed", "n", "m"), [(1, 4, 3), (2, 5, 2), (3, 3, 3), (4, 5, 4)])
def test_assignment_is_the_brute_force_optimum_and_costs_are_returned(
    seed: int, n: int, m: int
) -> None:
    matcher = HungarianMatcher()
    logits, boxes, labels, gt = _random_case(seed, n, m)
    cost = matcher.cost_matrix(logits, boxes, labels, gt)
    best = min(
        sum(cost[q, t].item() for t, q in enumerate(queries))
        for queries in itertools.permutations(range(n), m)
    )
    match = matcher.match_one(logits, boxes, labels, gt)
    assert len(match) == m
    assert sorted(match.targets.tolist()) == list(range(m))
    assert match.queries.tolist() == sorted(match.queries.tolist())
    assert len(set(match.queries.tolist())) == m
    assert match.costs.sum().item() == pytest.approx(best, abs=1e-4)
    torch.testing.assert_close(match.costs, cost[match.queries, match.targets])


def test_batch_call_empty_image_and_bad_input() -> None:
    matcher = HungarianMatcher()
    logits, boxes, labels, gt = _random_case(5, 4, 2)
    targets = [
        {"class_labels": labels, "boxes": gt},
        {"class_labels": labels[:0], "boxes": gt[:0]},
    ]
    matches = matcher(torch.stack([logits, logits]), torch.stack([boxes, boxes]), targets)
    assert len(matches[0]) == 2
    assert len(matches[1]) == 0
    with pytest.raises(ValueError, match="targets"):
        matcher(logits[None], boxes[None], targets)
    with pytest.raises(ValueError, match="NaN"):
        matcher.match_one(logits * float("nan"), boxes, labels, gt)


def test_perfect_match_cost() -> None:
    matcher = HungarianMatcher()
    assert matcher.perfect_match_cost == pytest.approx(2 * 0.75 * math.log(1e-8) - 2)
    assert matcher.perfect_match_cost == pytest.approx(-29.63, abs=5e-3)
    box = torch.tensor([[0.5, 0.5, 0.2, 0.3]])
    confident = torch.tensor([[-50.0, 50.0, -50.0]])  # probability 1 for class 1
    match = matcher.match_one(confident, box, torch.tensor([1]), box)
    assert match.costs.item() == pytest.approx(matcher.perfect_match_cost, abs=1e-4)
