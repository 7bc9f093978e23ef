"""From model outputs to scene graphs: object scores, top-K triplets, boxes in pixels.

Graph-constrained (default): one predicate per ordered pair, ``score(i, j) = max_p rel[i, j, p] *
conn[i, j] * s_i * s_j`` (diagonal excluded), top-K pairs. Unconstrained: the same product per
predicate, top-K over all ``(i, j, p)``. Optionally, triplets scoring below a
``relation_threshold`` are then dropped (:func:`build_scene_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from egtr.scene_graph import DEFAULT_OBJECT_THRESHOLD, Relation, SceneGraph, SceneObject

OBJECT_SCORES = ("softmax", "sigmoid")
"""How a query's object score is computed: max over classes of the softmax (the reference's
inference; the default) or of the sigmoid (its training) of the class logits."""


@dataclass(frozen=True)
class Triplets:
    """Top-K triplets of one image, best first: query indices, predicate ids and scores."""

    subjects: Tensor
    objects: Tensor
    predicates: Tensor
    scores: Tensor


def object_scores(logits: Tensor, mode: str = "softmax") -> tuple[Tensor, Tensor]:
    """Per-query ``(scores, labels)``: max over classes of ``softmax`` (default) or ``sigmoid``.

    Raises ``ValueError`` for a ``mode`` not in :data:`OBJECT_SCORES`.
    """
    if mode == "softmax":
        probs = logits.float().softmax(dim=-1)
    elif mode == "sigmoid":
        probs = logits.float().sigmoid()
    else:
        raise ValueError(f"object score mode must be one of {OBJECT_SCORES}, got {mode!r}")
    scores, labels = probs.max(dim=-1)
    return scores, labels


def top_triplets(
    obj_scores: Tensor,
    rel: Tensor,
    connectivity: Tensor | None = None,
    *,
    top_k: int = 100,
    graph_constrained: bool = True,
) -> Triplets:
    """Best ``top_k`` triplets of one image from ``obj_scores [N]``, ``rel [N, N, P]``, ``conn [N, N]``.

    Returns :class:`Triplets`, best first. Ties keep the lower flat index first (stable sort), so
    results are deterministic. Raises ``ValueError`` for inconsistent shapes or ``top_k < 0``.
    """
    n, n2, num_pred = rel.shape
    if n != n2 or obj_scores.shape != (n,):
        raise ValueError(
            f"rel must be [N, N, P] with obj_scores [N]; got {rel.shape}, {obj_scores.shape}"
        )
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    rel = rel.float()
    pair = obj_scores.float()[:, None] * obj_scores.float()[None, :]
    if connectivity is not None:
        pair = pair * connectivity.float()
    off_diag = ~torch.eye(n, dtype=torch.bool, device=rel.device)
    if graph_constrained:
        best, preds = rel.max(dim=-1)
        scores = (best * pair)[off_diag]  # [N*(N-1)]
        subj, obj = off_diag.nonzero(as_tuple=True)
        pred = preds[off_diag]
    else:
        full = rel * pair[..., None]
        scores = full[off_diag].reshape(-1)
        subj_idx, obj_idx = off_diag.nonzero(as_tuple=True)
        subj = subj_idx.repeat_interleave(num_pred)
        obj = obj_idx.repeat_interleave(num_pred)
        pred = torch.arange(num_pred, device=rel.device).repeat(subj_idx.numel())
    order = torch.sort(scores, descending=True, stable=True).indices[:top_k]
    return Triplets(subj[order], obj[order], pred[order], scores[order])


def boxes_to_pixels(boxes: Tensor, width: int, height: int) -> Tensor:
    """Normalised ``(cx, cy, w, h)`` to pixel ``(x1, y1, x2, y2)`` of a ``width x height`` image.

    Returns a float tensor of the same shape as ``boxes``.
    """
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    scale = torch.tensor([width, height, width, height], dtype=xyxy.dtype, device=xyxy.device)
    return xyxy * scale


def check_threshold(name: str, value: float | None) -> None:
    """Raise ``ValueError`` unless ``value`` (the setting ``name``) is ``None`` or a score in
    [0, 1] (``nan`` is refused)."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] or None, got {value}")


def build_scene_graph(
    logits: Tensor,
    boxes: Tensor,
    rel: Tensor,
    connectivity: Tensor | None,
    image_size: tuple[int, int],
    *,
    object_labels: Sequence[str],
    predicate_labels: Sequence[str],
    top_k: int = 100,
    graph_constrained: bool = True,
    object_score: str = "softmax",
    object_threshold: float | None = DEFAULT_OBJECT_THRESHOLD,
    relation_threshold: float | None = None,
) -> SceneGraph:
    """One image's :class:`SceneGraph` from its outputs (``image_size`` = original ``(w, h)``).

    The relations are the ``top_k`` triplets (:func:`top_triplets`), less, unless
    ``relation_threshold`` is ``None`` (the default: keep them all), those whose score is below
    ``relation_threshold``. Objects are those taking part in a kept relation plus, unless
    ``object_threshold`` is ``None``, every query whose object score is ``>= object_threshold``
    (standalone objects), sorted by score; relations keep the triplet order (best first) and
    index into the objects.
    Returns the :class:`SceneGraph`; raises ``ValueError`` as :func:`object_scores` and
    :func:`top_triplets` do, and for a ``relation_threshold`` outside [0, 1].
    """
    check_threshold("relation_threshold", relation_threshold)
    scores, labels = object_scores(logits, object_score)
    trip = top_triplets(scores, rel, connectivity, top_k=top_k, graph_constrained=graph_constrained)
    if relation_threshold is not None:
        # compared in float64, as the scores are reported (Relation.score), so that every kept
        # relation's score is >= the threshold and every dropped one's is below it
        keep = trip.scores.double() >= relation_threshold
        trip = Triplets(
            trip.subjects[keep], trip.objects[keep], trip.predicates[keep], trip.scores[keep]
        )
    pixel_boxes = boxes_to_pixels(boxes, *image_size).tolist()
    used = set(trip.subjects.tolist()) | set(trip.objects.tolist())
    if object_threshold is not None:
        used |= set((scores >= object_threshold).nonzero().flatten().tolist())
    score_list = scores.tolist()
    label_list = labels.tolist()
    queries = sorted(used, key=lambda q: (-score_list[q], q))
    position = {q: i for i, q in enumerate(queries)}
    objects = tuple(
        SceneObject(
            box=(pixel_boxes[q][0], pixel_boxes[q][1], pixel_boxes[q][2], pixel_boxes[q][3]),
            label=label_list[q],
            label_name=object_labels[label_list[q]],
            score=score_list[q],
            query=q,
        )
        for q in queries
    )
    relations = tuple(
        Relation(
            subject=position[s],
            object=position[o],
            predicate=p,
            predicate_name=predicate_labels[p],
            score=sc,
        )
        for s, o, p, sc in zip(
            trip.subjects.tolist(),
            trip.objects.tolist(),
            trip.predicates.tolist(),
            trip.scores.tolist(),
            strict=True,
        )
    )
    return SceneGraph(objects=objects, relations=relations, image_size=image_size)
