"""Post-processing on hand-built tensors: object scores, top-K triplets, pixel boxes, graphs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from egtr import SceneGraph
from egtr.postprocess import boxes_to_pixels, build_scene_graph, object_scores, top_triplets


def test_object_scores_softmax_and_sigmoid() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    scores, labels = object_scores(logits)
    assert labels.tolist() == [0, 2]
    e = math.exp(2.0)
    assert scores[0].item() == pytest.approx(e / (e + 2))
    scores_sig, labels_sig = object_scores(logits, "sigmoid")
    assert labels_sig.tolist() == [0, 2]
    assert scores_sig[1].item() == pytest.approx(1 / (1 + math.exp(-1.0)))
    with pytest.raises(ValueError, match="softmax"):
        object_scores(logits, "max")


def _hand_built() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obj = torch.tensor([1.0, 0.5, 0.8])
    rel = torch.zeros(3, 3, 2)
    rel[0, 1] = torch.tensor([0.9, 0.2])  # best p0: 0.9 * 1.0 * 0.5 = 0.45 (conn 1)
    rel[1, 2] = torch.tensor([0.1, 0.6])  # best p1: 0.6 * 0.5 * 0.8 = 0.24
    rel[2, 0] = torch.tensor([0.7, 0.5])  # best p0: 0.7 * 0.8 * 1.0 * conn 0.5 = 0.28
    rel[0, 0] = torch.tensor([1.0, 1.0])  # diagonal: never reported
    conn = torch.ones(3, 3)
    conn[2, 0] = 0.5
    return obj, rel, conn


def test_graph_constrained_top_k_pairs_with_argmax_predicate() -> None:
    obj, rel, conn = _hand_built()
    trip = top_triplets(obj, rel, conn, top_k=3)
    assert trip.subjects.tolist() == [0, 2, 1]
    assert trip.objects.tolist() == [1, 0, 2]
    assert trip.predicates.tolist() == [0, 0, 1]
    torch.testing.assert_close(trip.scores, torch.tensor([0.45, 0.28, 0.24]))
    assert top_triplets(obj, rel, conn, top_k=1).subjects.tolist() == [0]
    # all 6 off-diagonal pairs at most, never (i, i)
    full = top_triplets(obj, rel, conn, top_k=100)
    assert len(full.scores) == 6
    assert all(s != o for s, o in zip(full.subjects.tolist(), full.objects.tolist(), strict=True))


def test_unconstrained_ranks_every_predicate() -> None:
    obj, rel, conn = _hand_built()
    trip = top_triplets(obj, rel, conn, top_k=4, graph_constrained=False)
    got = list(
        zip(trip.subjects.tolist(), trip.objects.tolist(), trip.predicates.tolist(), strict=True)
    )
    # 0.45 (0,1,p0), 0.28 (2,0,p0), 0.24 (1,2,p1), 0.2 (2,0,p1)=0.5*0.8*0.5
    assert got == [(0, 1, 0), (2, 0, 0), (1, 2, 1), (2, 0, 1)]
    torch.testing.assert_close(trip.scores, torch.tensor([0.45, 0.28, 0.24, 0.2]))
    assert len(top_triplets(obj, rel, conn, top_k=100, graph_constrained=False).scores) == 12


def test_top_triplets_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="N, N, P"):
        top_triplets(torch.ones(3), torch.ones(3, 2, 2))


def test_boxes_to_pixels() -> None:
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2]])
    px = boxes_to_pixels(boxes, width=200, height=100)
    torch.testing.assert_close(
        px, torch.tensor([[0.0, 0.0, 200.0, 100.0], [0.0, 40.0, 100.0, 60.0]])
    )


def test_build_scene_graph_orders_objects_and_relations() -> None:
    obj_scores_target, rel, conn = _hand_built()
    # logits whose softmax max equals the target scores is awkward; use sigmoid mode instead
    logits = torch.full((3, 2), -30.0)
    labels = [1, 0, 1]
    for q, (score, label) in enumerate(zip(obj_scores_target.tolist(), labels, strict=True)):
        logits[q, label] = math.log(score / (1 - score)) if score < 1 else 30.0
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.9, 0.9, 0.2, 0.2]])
    graph = build_scene_graph(
        logits,
        boxes,
        rel,
        conn,
        (100, 50),
        object_labels=["cat", "dog"],
        predicate_labels=["on", "near"],
        top_k=2,
        object_score="sigmoid",
    )
    # relations (0 -on-> 1) and (2 -on-> 0); objects by score: query 0 (1.0), 2 (0.8), 1 (0.5)
    assert [o.query for o in graph.objects] == [0, 2, 1]
    assert [o.label_name for o in graph.objects] == ["dog", "dog", "cat"]
    assert graph.triplets()[0][:3] == ("dog", "on", "cat")
    assert [(r.subject, r.object) for r in graph.relations] == [(0, 2), (1, 0)]
    assert graph.relations[0].score == pytest.approx(0.45, abs=1e-5)
    assert graph.objects[0].box == pytest.approx((40.0, 20.0, 60.0, 30.0))
    assert graph.image_size == (100, 50)


def _boxes() -> torch.Tensor:
    return torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25


def _threshold_case(threshold: float | None) -> SceneGraph:
    # six queries (sigmoid scores below); one relation kept: query 1 (dog) -near-> query 5 (cat)
    target = [1.0, 0.6, 0.8, 0.5, 0.35, 0.1]
    labels = [0, 1, 0, 1, 0, 0]
    logits = torch.full((6, 2), -30.0)
    for q, (score, label) in enumerate(zip(target, labels, strict=True)):
        logits[q, label] = math.log(score / (1 - score)) if score < 1 else 30.0
    rel = torch.zeros(6, 6, 2)
    rel[1, 5, 1] = 1.0
    return build_scene_graph(
        logits,
        _boxes(),
        rel,
        None,
        (100, 50),
        object_labels=["cat", "dog"],
        predicate_labels=["on", "near"],
        top_k=1,
        object_score="sigmoid",
        object_threshold=threshold,
    )


def test_object_threshold_adds_confident_standalone_objects() -> None:
    graph = _threshold_case(0.3)
    # relation objects (1, 5) plus queries scoring >= 0.3 (0, 2, 3, 4), sorted by score
    assert [o.query for o in graph.objects] == [0, 2, 1, 3, 4, 5]
    assert [round(o.score, 4) for o in graph.objects] == [1.0, 0.8, 0.6, 0.5, 0.35, 0.1]
    (relation,) = graph.relations
    assert (relation.subject, relation.object) == (2, 5)
    assert graph.triplets()[0][:3] == ("dog", "near", "cat")
    assert graph.objects[5].box == pytest.approx(
        tuple(boxes_to_pixels(_boxes(), 100, 50)[5].tolist())
    )
    # the threshold is inclusive (sigmoid(0) is exactly 0.5); higher ones add fewer objects
    assert [o.query for o in _threshold_case(0.5).objects] == [0, 2, 1, 3, 5]
    assert [o.query for o in _threshold_case(0.9).objects] == [0, 1, 5]


def test_object_threshold_none_keeps_only_relation_objects() -> None:
    graph = _threshold_case(None)
    assert [o.query for o in graph.objects] == [1, 5]
    assert [(r.subject, r.object) for r in graph.relations] == [(0, 1)]
    assert graph.triplets()[0][:3] == ("dog", "near", "cat")


def _relation_threshold_case(**settings: Any) -> SceneGraph:
    # sigmoid object scores; four relations (graph-constrained), best first:
    # 0 -on-> 1: 0.9 * 1.0 * 0.9 = 0.81, 0 -near-> 2: 0.5 * 1.0 * 0.6 = 0.3,
    # 2 -near-> 3: 1.0 * 0.6 * 0.2 = 0.12, 1 -on-> 4: 1.0 * 0.9 * 0.1 = 0.09
    # (unconstrained: the same four, every other triplet scores 0)
    target = [1.0, 0.9, 0.6, 0.2, 0.1]
    labels = [0, 1, 0, 1, 0]
    logits = torch.full((5, 2), -30.0)
    for q, (score, label) in enumerate(zip(target, labels, strict=True)):
        logits[q, label] = math.log(score / (1 - score)) if score < 1 else 30.0
    rel = torch.zeros(5, 5, 2)
    rel[0, 1, 0] = 0.9
    rel[0, 2, 1] = 0.5
    rel[2, 3, 1] = 1.0
    rel[1, 4, 0] = 1.0
    return build_scene_graph(
        logits,
        torch.rand(5, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25,
        rel,
        None,
        (100, 50),
        object_labels=["cat", "dog"],
        predicate_labels=["on", "near"],
        top_k=4,
        object_score="sigmoid",
        **settings,
    )


def _relations_by_query(graph: SceneGraph) -> list[tuple[Any, ...]]:
    """Each relation as (subject query, object query, predicate, score, subject and object box)."""
    return [
        (
            graph.objects[r.subject].query,
            graph.objects[r.object].query,
            r.predicate,
            r.score,
            graph.objects[r.subject].box,
            graph.objects[r.object].box,
        )
        for r in graph.relations
    ]


@pytest.mark.parametrize("graph_constrained", [True, False])
@pytest.mark.parametrize("object_threshold", [0.3, None])
def test_relation_threshold_keeps_the_triplets_scoring_at_least_it(
    graph_constrained: bool, object_threshold: float | None
) -> None:
    settings = {"graph_constrained": graph_constrained, "object_threshold": object_threshold}
    full = _relation_threshold_case(**settings)
    assert len(full.relations) == 4
    scores = [r.score for r in full.relations]
    # the reported scores themselves are thresholds too: the comparison is inclusive
    for threshold in [0.0, 0.1, *scores, 0.5, 0.9, 1.0]:
        graph = _relation_threshold_case(relation_threshold=threshold, **settings)
        expected = [row for row in _relations_by_query(full) if row[3] >= threshold]
        # the same triplets, in the same order, indices pointing at the same boxes
        assert _relations_by_query(graph) == expected
        # objects recomputed: the kept relations' plus the confident standalone ones
        used = {q for row in expected for q in row[:2]}
        if object_threshold is not None:
            used |= {o.query for o in full.objects if o.score >= object_threshold}
        assert list(graph.objects) == [o for o in full.objects if o.query in used]


def test_relation_threshold_drops_an_object_only_a_dropped_relation_used() -> None:
    full = _relation_threshold_case()
    # queries 0, 1, 2 pass the 0.3 object threshold; 3 and 4 are there for their relations
    assert [o.query for o in full.objects] == [0, 1, 2, 3, 4]
    assert [round(r.score, 4) for r in full.relations] == [0.81, 0.3, 0.12, 0.09]
    graph = _relation_threshold_case(relation_threshold=0.1)
    assert [round(r.score, 4) for r in graph.relations] == [0.81, 0.3, 0.12]
    assert [o.query for o in graph.objects] == [0, 1, 2, 3]  # query 4 (score 0.1) is gone
    assert [(r.subject, r.object) for r in graph.relations] == [(0, 1), (0, 2), (2, 3)]
    assert graph.objects[3].box == full.objects[3].box
    graph = _relation_threshold_case(relation_threshold=0.5)
    assert [(r.subject, r.object) for r in graph.relations] == [(0, 1)]
    assert [o.query for o in graph.objects] == [0, 1, 2]  # 2 stays: 0.6 >= 0.3
    only = _relation_threshold_case(relation_threshold=0.5, object_threshold=None)
    assert [o.query for o in only.objects] == [0, 1]
    none_kept = _relation_threshold_case(relation_threshold=1.0)
    assert none_kept.relations == ()
    assert [o.query for o in none_kept.objects] == [0, 1, 2]


@pytest.mark.parametrize("graph_constrained", [True, False])
def test_relation_threshold_none_is_the_graph_without_it(graph_constrained: bool) -> None:
    without = _relation_threshold_case(graph_constrained=graph_constrained)
    for threshold in (None, 0.0):
        graph = _relation_threshold_case(
            graph_constrained=graph_constrained, relation_threshold=threshold
        )
        assert graph == without


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan, math.inf])
def test_relation_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match=r"relation_threshold must be in \[0, 1\] or None"):
        _relation_threshold_case(relation_threshold=threshold)
