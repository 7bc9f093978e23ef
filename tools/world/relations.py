"""Relations between the shapes of a scene, defined on their boxes (``x0, y0, x1, y1``).

The scene sampler guarantees that every pair is either apart (boxes disjoint), inside (box and
mask contained) or overlapping (masks intersect), so these box definitions are what one sees.
"""

from __future__ import annotations

from collections.abc import Callable

from tools.world.scene import SIZE_ORDER, Box, Shape


def left_of(a: Box, b: Box) -> bool:
    """``a`` lies entirely to the left of ``b``."""
    return a[2] <= b[0]


def right_of(a: Box, b: Box) -> bool:
    return b[2] <= a[0]


def above(a: Box, b: Box) -> bool:
    """``a`` lies entirely above ``b`` (image y grows downwards)."""
    return a[3] <= b[1]


def below(a: Box, b: Box) -> bool:
    return b[3] <= a[1]


def boxes_intersect(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside(a: Box, b: Box) -> bool:
    """``a``'s box is contained in ``b``'s (and is not the same box)."""
    return a != b and b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def overlapping(a: Box, b: Box) -> bool:
    """The boxes intersect and neither contains the other."""
    return boxes_intersect(a, b) and not inside(a, b) and not inside(b, a)


#: Caption relation words and their (box) truth; antonyms swap in foils.
SPATIAL: dict[str, Callable[[Box, Box], bool]] = {
    "left": left_of,
    "right": right_of,
    "above": above,
    "below": below,
}
ANTONYM: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}

#: Visual Genome predicates, in ``rel_categories`` order (index + 1 = predicate id).
PREDICATES: tuple[str, ...] = (
    "left of",
    "right of",
    "above",
    "below",
    "inside",
    "overlapping",
    "bigger than",
    "smaller than",
    "same colour as",
    "same shape as",
)


def _axis_predicate(a: Box, b: Box) -> str | None:
    """For disjoint boxes, the relation along the axis with the wider gap (one per pair)."""
    gap_x = max(b[0] - a[2], a[0] - b[2])
    gap_y = max(b[1] - a[3], a[1] - b[3])
    if gap_x <= 0 and gap_y <= 0:
        return None
    if gap_x >= gap_y:
        return "left of" if left_of(a, b) else "right of"
    return "above" if above(a, b) else "below"


def pair_predicates(a: Shape, b: Shape) -> list[str]:
    """All predicates that hold for the ordered pair (subject ``a``, object ``b``)."""
    out: list[str] = []
    spatial = _axis_predicate(a.box, b.box)
    if spatial is not None:
        out.append(spatial)
    if inside(a.box, b.box):
        out.append("inside")
    if overlapping(a.box, b.box):
        out.append("overlapping")
    rank_a, rank_b = SIZE_ORDER.index(a.size), SIZE_ORDER.index(b.size)
    if rank_a > rank_b:
        out.append("bigger than")
    if rank_a < rank_b:
        out.append("smaller than")
    if a.colour == b.colour:
        out.append("same colour as")
    if a.shape == b.shape:
        out.append("same shape as")
    return out


def scene_relations(shapes: list[Shape]) -> list[tuple[int, int, str]]:
    """``(subject index, object index, predicate)`` for every ordered pair of distinct shapes."""
    return [
        (i, j, predicate)
        for i, a in enumerate(shapes)
        for j, b in enumerate(shapes)
        if i != j
        for predicate in pair_predicates(a, b)
    ]
