"""The factorised relation head equals the literal pair-tensor construction; frequency tables."""

from __future__ import annotations

import math

import pytest
import torch

from egtr.relation_head import (
    RelationHead,
    build_rel_dist,
    build_triplet_dist,
    literal_relation_logits,
)


def _random_head(d: int = 16, layers: int = 3, preds: int = 5, seed: int = 0) -> RelationHead:
    torch.manual_seed(seed)
    head = RelationHead(d, layers, preds)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    return head


@pytest.mark.parametrize(("batch", "n"), [(1, 1), (2, 5), (3, 7)])
def test_factorised_head_equals_literal_construction(batch: int, n: int) -> None:
    head = _random_head()
    q = torch.randn(batch, 3, n, 16)
    k = torch.randn(batch, 3, n, 16)
    z = torch.randn(batch, n, 16)
    rel, conn = head(q, k, z)
    rel_ref, conn_ref = literal_relation_logits(head, q, k, z)
    assert rel.shape == (batch, n, n, 5)
    assert conn.shape == (batch, n, n)
    torch.testing.assert_close(rel, rel_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conn, conn_ref, rtol=1e-5, atol=1e-5)


def test_pairs_are_ordered_subject_row_object_column() -> None:
    head = _random_head()
    q = torch.randn(1, 3, 4, 16)
    k = torch.randn(1, 3, 4, 16)
    z = torch.randn(1, 4, 16)
    rel, _ = head(q, k, z)
    # changing only query 0's queries (subject side) may change row 0 only, not other rows
    q2 = q.clone()
    q2[:, :, 0] += 1.0
    rel2, _ = head(q2, k, z)
    assert not torch.allclose(rel[0, 0], rel2[0, 0])
    torch.testing.assert_close(rel[0, 1:], rel2[0, 1:])


def test_gradients_match_literal_construction() -> None:
    head = _random_head(d=8, layers=2, preds=3)
    q = torch.randn(2, 2, 4, 8)
    k = torch.randn(2, 2, 4, 8)
    z = torch.randn(2, 4, 8)
    rel, conn = head(q, k, z)
    (rel.sum() + conn.sum()).backward()
    fast = [p.grad.clone() for p in head.parameters()]  # type: ignore[union-attr]
    head.zero_grad()
    rel_ref, conn_ref = literal_relation_logits(head, q, k, z)
    (rel_ref.sum() + conn_ref.sum()).backward()
    for got, want in zip(fast, (p.grad for p in head.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_input_shapes_are_rejected() -> None:
    head = _random_head()
    with pytest.raises(ValueError, match="queries"):
        head(torch.randn(1, 2, 4, 16), torch.randn(1, 3, 4, 16), torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="last_hidden"):
        head(torch.randn(1, 3, 4, 16), torch.randn(1, 3, 4, 16), torch.randn(1, 4, 8))


def test_triplet_dist_log_count_construction() -> None:
    counts = torch.zeros(3, 3, 2)
    counts[0, 1, 0] = 4  # seen pair (0, 1): predicate 0 seen 4 times, predicate 1 never
    table = build_triplet_dist(counts)
    assert table[0, 1, 0].item() == pytest.approx(math.log(4.0), abs=1e-6)
    # unseen predicate of a seen pair: log(1e-12 / 4)
    assert table[0, 1, 1].item() == pytest.approx(math.log(1e-12 / 4), rel=1e-5)
    assert table[0, 1, 1].item() < -27.0
    # unseen pair: log(0 + 1e-12 / 1e-12) = 0
    assert torch.all(table[1, 0] == 0)
    assert torch.all(table[2, 2] == 0)
    assert table.dtype == torch.float32


def test_triplet_dist_matches_formula_literally() -> None:
    counts = torch.randint(0, 5, (4, 4, 3)).float()
    expected = torch.log(counts + 1e-12 / (counts.sum(-1, keepdim=True) + 1e-12))
    torch.testing.assert_close(build_triplet_dist(counts), expected)
    with pytest.raises(ValueError, match="C\\+1"):
        build_triplet_dist(torch.zeros(3, 3))


def test_rel_dist_is_the_predicate_marginal() -> None:
    counts = torch.zeros(2, 2, 3)
    counts[0, 1] = torch.tensor([1.0, 3.0, 0.0])
    counts[1, 0] = torch.tensor([0.0, 0.0, 4.0])
    torch.testing.assert_close(build_rel_dist(counts), torch.tensor([0.125, 0.375, 0.5]))
