"""Captions in a fixed grammar, their truth in a scene, one-word foils and hallucinated variants.

Grammar: ``a [small|large] COLOUR SHAPE (to the left of|to the right of|above|below|and)
a [small|large] COLOUR SHAPE``. A mention names one shape (colours × shapes are unique in a
scene). A foil changes exactly one word and is false in the scene: a colour or shape foil names a
colour or shape that appears nowhere in the image (as FOIL's foil objects are absent); a size foil
names an existing shape at the wrong size; a relation foil keeps both shapes and swaps the
relation for its antonym.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tools.world.relations import ANTONYM, SPATIAL
from tools.world.scene import COLOURS, SHAPES, Scene, Shape

SIZE_WORDS: tuple[str, ...] = ("small", "large")
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to", "the", "left", "of"),
    "right": ("to", "the", "right", "of"),
    "above": ("above",),
    "below": ("below",),
    "and": ("and",),
}
RELATION_WORD_INDEX: dict[str, int] = {"left": 2, "right": 2, "above": 0, "below": 0, "and": 0}


@dataclass(frozen=True)
class Mention:
    """``a [size] colour shape``; ``size`` is ``None`` when no size word is said."""

    colour: str
    shape: str
    size: str | None = None

    def words(self) -> list[str]:
        return ["a", *([self.size] if self.size else []), self.colour, self.shape]

    def matches(self, shape: Shape) -> bool:
        return (
            shape.colour == self.colour
            and shape.shape == self.shape
            and (self.size is None or shape.size == self.size)
        )


@dataclass(frozen=True)
class Caption:
    first: Mention
    relation: str  # a key of RELATION_PHRASES
    second: Mention

    def words(self) -> list[str]:
        return [*self.first.words(), *RELATION_PHRASES[self.relation], *self.second.words()]

    @property
    def text(self) -> str:
        return " ".join(self.words())

    def slot_index(self, slot: str) -> int:
        """Word index of ``slot`` (``colour1``, ``shape1``, ``size1``, ``relation``, ...)."""
        first = self.first.words()
        if slot == "relation":
            return len(first) + RELATION_WORD_INDEX[self.relation]
        mention, offset = (
            (self.first, 0)
            if slot.endswith("1")
            else (self.second, len(first) + len(RELATION_PHRASES[self.relation]))
        )
        names = ["a", *(["size"] if mention.size else []), "colour", "shape"]
        return offset + names.index(slot[:-1])


def holds(scene: Scene, caption: Caption) -> bool:
    """True when two distinct shapes match the mentions and stand in the relation."""
    for i, a in enumerate(scene.shapes):
        if not caption.first.matches(a):
            continue
        for j, b in enumerate(scene.shapes):
            if i == j or not caption.second.matches(b):
                continue
            if caption.relation == "and" or SPATIAL[caption.relation](a.box, b.box):
                return True
    return False


def mention_exists(scene: Scene, mention: Mention) -> bool:
    return any(mention.matches(s) for s in scene.shapes)


def _mention(shape: Shape, rng: np.random.Generator) -> Mention:
    size = shape.size if shape.size in SIZE_WORDS and rng.random() < 0.35 else None
    return Mention(shape.colour, shape.shape, size)


def true_captions(scene: Scene, rng: np.random.Generator, count: int) -> list[Caption]:
    """Up to ``count`` distinct true captions (relational when a pair is apart, else ``and``)."""
    candidates: list[tuple[int, int, str]] = []
    for i, a in enumerate(scene.shapes):
        for j, b in enumerate(scene.shapes):
            if i == j:
                continue
            candidates.extend((i, j, r) for r, test in SPATIAL.items() if test(a.box, b.box))
    if not candidates:
        candidates = [(0, 1, "and"), (1, 0, "and")]
    out: list[Caption] = []
    seen: set[str] = set()
    for _ in range(8 * count):
        i, j, relation = candidates[int(rng.integers(len(candidates)))]
        caption = Caption(_mention(scene.shapes[i], rng), relation, _mention(scene.shapes[j], rng))
        if caption.text not in seen and holds(scene, caption):
            seen.add(caption.text)
            out.append(caption)
        if len(out) == count:
            break
    return out


@dataclass(frozen=True)
class Foil:
    """A caption with one word changed: ``slot`` names the word, ``target`` -> ``foil``."""

    caption: Caption
    original: Caption
    kind: str  # colour | shape | size | relation
    slot: str
    target: str
    foil: str

    @property
    def index(self) -> int:
        """Index of the changed word in the foil caption's words."""
        return self.caption.slot_index(self.slot)


def _with_mention(caption: Caption, which: str, mention: Mention) -> Caption:
    return replace(caption, first=mention) if which == "1" else replace(caption, second=mention)


def foil_candidates(scene: Scene, caption: Caption) -> list[Foil]:
    """Every one-word change of ``caption`` that is false in ``scene`` by the rules above."""
    out: list[Foil] = []
    colours = [c for c in COLOURS if all(s.colour != c for s in scene.shapes)]
    shapes = [k for k in SHAPES if all(s.shape != k for s in scene.shapes)]
    for which, mention in (("1", caption.first), ("2", caption.second)):
        options: list[tuple[str, str, str, Mention]] = []
        options += [("colour", mention.colour, c, replace(mention, colour=c)) for c in colours]
        options += [("shape", mention.shape, k, replace(mention, shape=k)) for k in shapes]
        if mention.size is not None:
            other = "large" if mention.size == "small" else "small"
            options.append(("size", mention.size, other, replace(mention, size=other)))
        for kind, target, word, changed in options:
            if word != target and not mention_exists(scene, changed):
                out.append(
                    Foil(
                        _with_mention(caption, which, changed),
                        caption,
                        kind,
                        f"{kind}{which}",
                        target,
                        word,
                    )
                )
    if caption.relation in ANTONYM:
        swapped = replace(caption, relation=ANTONYM[caption.relation])
        if not holds(scene, swapped):
            out.append(
                Foil(swapped, caption, "relation", "relation", caption.relation, swapped.relation)
            )
    return out


def sample_foils(
    scene: Scene, caption: Caption, rng: np.random.Generator, count: int
) -> list[Foil]:
    """Up to ``count`` foils of different kinds where possible (kind first, then word)."""
    by_kind: dict[str, list[Foil]] = {}
    for foil in foil_candidates(scene, caption):
        by_kind.setdefault(foil.kind, []).append(foil)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    out: list[Foil] = []
    for kind in kinds[:count]:
        options = by_kind[kind]
        out.append(options[int(rng.integers(len(options)))])
    return out


@dataclass(frozen=True)
class Hallucination:
    """A caption with 1–2 words changed (each change on its own would be a foil)."""

    caption: Caption
    original: Caption
    changed: tuple[int, ...]  # word indices (in ``caption``) that are hallucinated


def sample_hallucination(
    scene: Scene, caption: Caption, rng: np.random.Generator
) -> Hallucination | None:
    """One or two wrong words; two only among the mention words (colour, shape, size)."""
    candidates = foil_candidates(scene, caption)
    if not candidates:
        return None
    first = candidates[int(rng.integers(len(candidates)))]
    if first.kind == "relation" or rng.random() < 0.6:
        return Hallucination(first.caption, caption, (first.index,))
    which = first.slot[-1]
    for _ in range(10):
        second = candidates[int(rng.integers(len(candidates)))]
        if second.kind == "relation" or second.slot == first.slot:
            continue
        other = second.slot[-1]
        source = first.caption.first if other == "1" else first.caption.second
        kind = second.kind
        changed_mention = replace(source, **{kind: second.foil})
        both = _with_mention(first.caption, other, changed_mention)
        mention = both.first if which == "1" else both.second
        if other == which and mention_exists(scene, mention):
            continue
        if holds(scene, both):
            continue
        indices = tuple(sorted({both.slot_index(first.slot), both.slot_index(second.slot)}))
        return Hallucination(both, caption, indices)
    return Hallucination(first.caption, caption, (first.index,))
