"""The result type: a scene graph of detected objects and subject–predicate–object relations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx

DEFAULT_OBJECT_THRESHOLD = 0.3
"""Objects scoring at least this are listed in a scene graph even when no kept relation uses them."""


@dataclass(frozen=True)
class SceneObject:
    """A detected object: ``box`` is ``(x1, y1, x2, y2)`` in pixels of the original image."""

    box: tuple[float, float, float, float]
    label: int
    label_name: str
    score: float
    query: int = -1
    """Index of the detector query that produced it (``-1`` when unknown)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [float(v) for v in self.box],
            "label": int(self.label),
            "label_name": self.label_name,
            "score": float(self.score),
            "query": int(self.query),
        }


@dataclass(frozen=True)
class Relation:
    """``objects[subject] --predicate--> objects[object]`` with its triplet score."""

    subject: int
    object: int
    predicate: int
    predicate_name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": int(self.subject),
            "object": int(self.object),
            "predicate": int(self.predicate),
            "predicate_name": self.predicate_name,
            "score": float(self.score),
        }


@dataclass(frozen=True)
class SceneGraph:
    """Objects (sorted by score) and relations between them (sorted by score).

    ``objects`` holds the objects of the kept relations plus confident standalone objects (score
    at least the ``object_threshold`` of the post-processing, default
    :data:`DEFAULT_OBJECT_THRESHOLD`). ``image_size`` is ``(width, height)`` of the original
    image; relation indices point into ``objects``.
    """

    objects: tuple[SceneObject, ...]
    relations: tuple[Relation, ...]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.objects)
        for rel in self.relations:
            if not (0 <= rel.subject < n and 0 <= rel.object < n):
                raise ValueError(f"relation {rel} points outside the {n} objects")

    def triplets(self) -> list[tuple[str, str, str, float]]:
        """``(subject name, predicate name, object name, score)`` for each relation."""
        return [
            (
                self.objects[r.subject].label_name,
                r.predicate_name,
                self.objects[r.object].label_name,
                r.score,
            )
            for r in self.relations
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain lists, ints, floats and strings)."""
        return {
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "objects": [obj.to_dict() for obj in self.objects],
            "relations": [rel.to_dict() for rel in self.relations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneGraph:
        """Inverse of :meth:`to_dict`."""
        objects = tuple(
            SceneObject(
                box=tuple(float(v) for v in o["box"]),  # type: ignore[arg-type]
                label=int(o["label"]),
                label_name=str(o["label_name"]),
                score=float(o["score"]),
                query=int(o.get("query", -1)),
            )
            for o in data["objects"]
        )
        relations = tuple(
            Relation(
                subject=int(r["subject"]),
                object=int(r["object"]),
                predicate=int(r["predicate"]),
                predicate_name=str(r["predicate_name"]),
                score=float(r["score"]),
            )
            for r in data["relations"]
        )
        width, height = data["image_size"]
        return cls(objects=objects, relations=relations, image_size=(int(width), int(height)))

    def to_networkx(self) -> networkx.MultiDiGraph:
        """A ``networkx.MultiDiGraph``: one node per object, one edge per relation.

        Needs the optional dependency ``networkx`` (``pip install 'egtr[viz]'``).
        """
        try:
            import networkx as nx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "SceneGraph.to_networkx needs networkx: pip install 'egtr[viz]'"
            ) from exc
        graph = nx.MultiDiGraph()
        for index, obj in enumerate(self.objects):
            graph.add_node(
                index, label=obj.label_name, label_id=obj.label, score=obj.score, box=obj.box
            )
        for rel in self.relations:
            graph.add_edge(
                rel.subject,
                rel.object,
                predicate=rel.predicate_name,
                predicate_id=rel.predicate,
                score=rel.score,
            )
        return graph
