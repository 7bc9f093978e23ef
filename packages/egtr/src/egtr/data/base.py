"""What the scene-graph data sets share: the parsed record, the target type, item assembly."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vl_core.images import ImageLoadError, ImageNotFoundError

if TYPE_CHECKING:
    from egtr.data.transforms import SceneGraphTransform


class AnnotationError(ValueError):
    """A malformed annotation: the message names the file and the record (index or id)."""

    def __init__(self, path: str | os.PathLike[str], where: str, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {where}: {reason}")
        self.path = os.fspath(path)
        self.where = where
        self.reason = reason


class Target(TypedDict):
    """One image's annotations after the transforms (see the batch contract in :mod:`egtr.data`)."""

    boxes: Tensor
    class_labels: Tensor
    rels: Tensor
    image_id: int
    orig_size: Tensor
    size: Tensor
    boxes_xyxy_orig: Tensor


@dataclass(frozen=True)
class SceneGraphRecord:
    """One parsed image: boxes ``[M, 4]`` xyxy in original pixels as annotated, 0-based labels
    ``[M]`` and relations ``[R, 3]`` ``(subject, object, predicate)`` (all 0-based)."""

    image_id: int
    file_name: str
    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    rels: npt.NDArray[np.int64]


class SceneGraphDataset(Dataset[tuple[Tensor, Target]]):
    """A list of :class:`SceneGraphRecord` plus an image folder, producing ``(image, target)``.

    Subclasses parse a public format into records; :meth:`relations` is the hook for per-load
    relation sampling (Open Images training).

    ``flip_predicates``: pairs of predicate names that trade places when the transform mirrors
    the image left-right (``[("left of", "right of")]``), so a flipped image keeps true
    relations. VG150 and Open Images V6 have no such predicate; an unknown name is an error.
    """

    def __init__(
        self,
        records: Sequence[SceneGraphRecord],
        image_dir: str | os.PathLike[str],
        *,
        split: str,
        object_labels: Sequence[str],
        predicate_labels: Sequence[str],
        transforms: SceneGraphTransform,
        flip_predicates: Sequence[Sequence[str]] = (),
    ) -> None:
        self.records = list(records)
        self.image_dir = Path(image_dir)
        self.split = split
        self.object_labels = list(object_labels)
        self.predicate_labels = list(predicate_labels)
        self.transforms = transforms
        self.predicate_mirror = mirror_table(self.predicate_labels, flip_predicates)

    @property
    def num_classes(self) -> int:
        """Number of object classes ``C``."""
        return len(self.object_labels)

    @property
    def num_predicates(self) -> int:
        """Number of predicates ``P``."""
        return len(self.predicate_labels)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        """Path of record ``index``'s image."""
        return self.image_dir / self.records[index].file_name

    def load_image(self, index: int) -> Image.Image:
        """Record ``index``'s image as RGB (no EXIF rotation: annotations refer to stored pixels).

        Raises ``ImageNotFoundError`` when the file does not exist and ``ImageLoadError`` when it
        cannot be read or decoded (both name the path, record and image id).
        """
        path = self.image_path(index)
        where = f"{path} (record {index}, image_id {self.records[index].image_id})"
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError as exc:
            raise ImageNotFoundError(where, "file not found") from exc
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(where, str(exc)) from exc

    def relations(self, index: int) -> npt.NDArray[np.int64]:
        """Relations of record ``index`` for this load (the annotated ones by default)."""
        return self.records[index].rels

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        record = self.records[index]
        image = self.load_image(index)
        rels = torch.from_numpy(np.array(self.relations(index), dtype=np.int64).reshape(-1, 3))
        width, height = image.size
        orig = torch.from_numpy(record.boxes.astype(np.float32).reshape(-1, 4))
        orig = _clip_xyxy(orig, width, height)
        labels = torch.from_numpy(record.labels.astype(np.int64))
        pixels, boxes, keep, flipped = self.transforms.apply(image, orig)
        if flipped and len(rels):
            rels[:, 2] = self.predicate_mirror[rels[:, 2]]
        if not bool(keep.all()):
            boxes, labels, orig = boxes[keep], labels[keep], orig[keep]
            rels = remap_relations(rels, keep)
        new_h, new_w = int(pixels.shape[-2]), int(pixels.shape[-1])
        target: Target = {
            "boxes": xyxy_to_normalised_cxcywh(boxes, new_w, new_h),
            "class_labels": labels,
            "rels": rels,
            "image_id": int(record.image_id),
            "orig_size": torch.tensor([height, width], dtype=torch.long),
            "size": torch.tensor([new_h, new_w], dtype=torch.long),
            "boxes_xyxy_orig": orig,
        }
        return pixels, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, predicates={self.num_predicates})"
        )


def mirror_table(predicates: Sequence[str], pairs: Sequence[Sequence[str]]) -> Tensor:
    """``[P]`` predicate index -> its index after a left-right flip (identity but for ``pairs``).

    Raises ``ValueError`` when an entry of ``pairs`` is not a pair of names, names a predicate
    not in ``predicates``, or names a predicate that is already in another pair.
    """
    table = torch.arange(len(predicates))
    index = {name: i for i, name in enumerate(predicates)}
    seen: set[str] = set()
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"flip_predicates: each entry must be a pair of names, got {pair!r}")
        for name in pair:
            if name not in index:
                raise ValueError(
                    f"flip_predicates: unknown predicate {name!r}; the data set has {predicates}"
                )
            if name in seen:
                raise ValueError(f"flip_predicates: {name!r} appears in more than one pair")
            seen.add(name)
        a, b = index[pair[0]], index[pair[1]]
        table[a], table[b] = b, a
    return table


def remap_relations(rels: Tensor, keep: Tensor) -> Tensor:
    """Relations among the kept boxes only, renumbered to the kept boxes' new indices."""
    new_index = torch.cumsum(keep.long(), 0) - 1
    valid = keep[rels[:, 0]] & keep[rels[:, 1]] if len(rels) else torch.zeros(0, dtype=torch.bool)
    kept = rels[valid].clone()
    kept[:, 0] = new_index[kept[:, 0]]
    kept[:, 1] = new_index[kept[:, 1]]
    return kept


def xyxy_to_normalised_cxcywh(boxes: Tensor, width: int, height: int) -> Tensor:
    """Pixel ``(x1, y1, x2, y2)`` to ``(cx, cy, w, h)`` divided by the image size."""
    x1, y1, x2, y2 = boxes.float().reshape(-1, 4).unbind(-1)
    out = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return out / torch.tensor([width, height, width, height], dtype=torch.float32)


def _clip_xyxy(boxes: Tensor, width: int, height: int) -> Tensor:
    """Boxes clipped to the image ``[0, width] x [0, height]``."""
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), limits)


def check_relations(
    rels: Any, num_boxes: int, num_predicates: int, *, offset: int, path: Path, where: str
) -> npt.NDArray[np.int64]:
    """``rels`` as an ``[R, 3]`` int64 array with the predicate shifted by ``-offset``.

    Raises ``AnnotationError`` (naming ``path`` and ``where``) when ``rels`` is not a list of
    ``[s, o, p]`` triples, an entry is not a finite integer, a subject or object is outside
    ``[0, num_boxes)``, or a predicate is outside ``[offset, num_predicates + offset - 1]``.
    """
    try:
        array = np.asarray(rels if rels is not None else [], dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(
            path, where, f"relations must be [[s, o, p], ...], got {rels!r}"
        ) from exc
    if array.size and (not np.all(np.isfinite(array)) or np.any(array != np.round(array))):
        raise AnnotationError(path, where, f"relation entries must be integers, got {rels!r}")
    out = array.astype(np.int64)
    if len(out):
        out[:, 2] -= offset
        bad = (out[:, :2] < 0).any(1) | (out[:, :2] >= num_boxes).any(1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AnnotationError(
                path, where, f"relation {row} {rels[row]!r} points outside the {num_boxes} boxes"
            )
        bad = (out[:, 2] < 0) | (out[:, 2] >= num_predicates)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AnnotationError(
                path,
                where,
                f"relation {row} {rels[row]!r}: predicate must be in "
                f"[{offset}, {num_predicates + offset - 1}]",
            )
    return out
