"""The result type: a scene graph of detected objects and subject–predicate–object relations.

Sizes are ``(width, height)`` and boxes ``(x1, y1, x2, y2)`` in pixels of the original image.
``to_dict()`` / ``from_dict()`` round-trip exactly; ``egtr predict`` rows are ``to_dict()`` plus
the run's bookkeeping (``id``, ``image``, ``drawing``).
"""

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
        """A JSON-serialisable dict: ``box``, ``label``, ``label_name``, ``score``, ``query``."""
        return {
            "box": [float(v) for v in self.box],
            "label": int(self.label),
            "label_name": self.label_name,
            "score": float(self.score),
            "query": int(self.query),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneObject:
        """Inverse of :meth:`to_dict` (``query`` defaults to -1). Raises ``KeyError`` for a
        missing field, ``ValueError`` / ``TypeError`` for a malformed one."""
        x1, y1, x2, y2 = (float(v) for v in data["box"])
        return cls(
            box=(x1, y1, x2, y2),
            label=int(data["label"]),
            label_name=str(data["label_name"]),
            score=float(data["score"]),
            query=int(data.get("query", -1)),
        )


@dataclass(frozen=True)
class Relation:
    """``objects[subject] --predicate--> objects[object]`` with its triplet score."""

    subject: int
    object: int
    predicate: int
    predicate_name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``subject``, ``object``, ``predicate``, ``predicate_name``,
        ``score``."""
        return {
            "subject": int(self.subject),
            "object": int(self.object),
            "predicate": int(self.predicate),
            "predicate_name": self.predicate_name,
            "score": float(self.score),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Relation:
        """Inverse of :meth:`to_dict`. Raises ``KeyError`` for a missing field, ``ValueError`` /
        ``TypeError`` for a malformed one."""
        return cls(
            subject=int(data["subject"]),
            object=int(data["object"]),
            predicate=int(data["predicate"]),
            predicate_name=str(data["predicate_name"]),
            score=float(data["score"]),
        )


@dataclass(frozen=True)
class SceneGraph:
    """Objects (sorted by score) and relations between them (sorted by score).

    ``objects`` holds the objects of the kept relations plus confident standalone objects (score
    at least the ``object_threshold`` of the post-processing, default
    :data:`DEFAULT_OBJECT_THRESHOLD`). ``image_size`` is ``(width, height)`` of the original
    image; relation indices point into ``objects``.

    Raises ``ValueError`` when a relation points outside ``objects``.
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
        """Inverse of :meth:`to_dict` (extra keys, such as a row's ``id``, are ignored).

        Raises ``KeyError`` for a missing field, ``ValueError`` / ``TypeError`` for a malformed
        one or a relation pointing outside the objects.
        """
        objects = tuple(SceneObject.from_dict(o) for o in data["objects"])
        relations = tuple(Relation.from_dict(r) for r in data["relations"])
        width, height = data["image_size"]
        return cls(objects=objects, relations=relations, image_size=(int(width), int(height)))

    def to_networkx(self) -> networkx.MultiDiGraph:
        """A ``networkx.MultiDiGraph``: one node per object, one edge per relation.

        Needs the optional dependency ``networkx``: raises ``vl_core.cli.MissingExtraError`` (an
        ``ImportError``) naming ``egtr[viz]`` without it.
        """
        from vl_core.cli import require_extra

        nx = require_extra(
            "networkx", package="egtr", extra="viz", feature="SceneGraph.to_networkx"
        )
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
