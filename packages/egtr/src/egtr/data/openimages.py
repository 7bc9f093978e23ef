"""Open Images V6 in the BGNN/PySGG processing.

Layout under ``root``: ``annotations/vrd-{train,val,test}-anno.json`` (a list of ``{img_fn,
bbox [[x1, y1, x2, y2], ...], det_labels [...], rel [[s, o, p], ...]}``, labels and predicates
0-based), ``annotations/categories_dict.json`` (``{"obj": [...], "rel": [...]}``) and
``images/<img_fn>.jpg``. ``image_id`` is the record's index in its annotation file.

Training rules (``train_rules``, on for the train split): images with more than ``max_boxes``
boxes are dropped, identical triplets are de-duplicated, and each time an image is loaded one
predicate per ``(subject, object)`` pair is drawn at random (torch's global generator, so it is
reproducible under ``torch.manual_seed`` and DataLoader worker seeding).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from egtr.data.base import (
    AnnotationError,
    SceneGraphDataset,
    SceneGraphRecord,
    check_relations,
)
from egtr.data.transforms import SceneGraphTransform, Stage, build_transforms

SPLITS = ("train", "val", "test")


class OpenImagesDataset(SceneGraphDataset):
    """Open Images V6 scene graphs: ``(image, target)`` items following the :mod:`egtr.data`
    contract. ``train_rules`` defaults to ``split == "train"`` (see the module docs)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        stage: Stage = "egtr",
        transforms: SceneGraphTransform | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        train_rules: bool | None = None,
        max_boxes: int = 200,
        flip_predicates: Sequence[Sequence[str]] = (),
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        self.train_rules = split == "train" if train_rules is None else train_rules
        categories_path = root / "annotations" / "categories_dict.json"
        anno_path = root / "annotations" / f"vrd-{split}-anno.json"
        categories = _read_json(categories_path)
        if (
            not isinstance(categories, dict)
            or not isinstance(categories.get("obj"), list)
            or not isinstance(categories.get("rel"), list)
        ):
            raise AnnotationError(categories_path, "file", 'expected {"obj": [...], "rel": [...]}')
        object_labels = [str(name) for name in categories["obj"]]
        predicate_labels = [str(name) for name in categories["rel"]]
        entries = _read_json(anno_path)
        if not isinstance(entries, list):
            raise AnnotationError(anno_path, "file", "expected a list of image records")
        records = []
        for index, entry in enumerate(entries):
            record = _parse_entry(
                entry, index, anno_path, len(object_labels), len(predicate_labels)
            )
            if self.train_rules:
                if len(record.boxes) > max_boxes:
                    continue
                record = _deduplicate(record)
            records.append(record)
        super().__init__(
            records,
            image_dir if image_dir is not None else root / "images",
            split=split,
            object_labels=object_labels,
            predicate_labels=predicate_labels,
            transforms=transforms if transforms is not None else build_transforms(split, stage),
            flip_predicates=flip_predicates,
        )
        self.root = root
        self.max_boxes = max_boxes

    def relations(self, index: int) -> npt.NDArray[np.int64]:
        """With the training rules: one predicate per pair, drawn anew at every load."""
        rels = self.records[index].rels
        if not self.train_rules or len(rels) == 0:
            return rels
        return sample_one_predicate_per_pair(rels)


def sample_one_predicate_per_pair(rels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """One uniformly drawn relation per ``(subject, object)`` pair, pairs in first-seen order."""
    pairs, first, inverse = np.unique(rels[:, :2], axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(pairs))
    draws = torch.rand(len(pairs)).numpy()
    pick = np.minimum((draws * counts).astype(np.int64), counts - 1)  # rank within its pair
    order = np.argsort(inverse, kind="stable")  # rows grouped by pair, file order inside
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = order[starts + pick]
    sampled: npt.NDArray[np.int64] = rels[chosen[np.argsort(first, kind="stable")]]
    return sampled


def _deduplicate(record: SceneGraphRecord) -> SceneGraphRecord:
    """The record with repeated ``(s, o, p)`` triplets kept once (first occurrence order)."""
    if len(record.rels) == 0:
        return record
    _, first = np.unique(record.rels, axis=0, return_index=True)
    rels = record.rels[np.sort(first)]
    return SceneGraphRecord(record.image_id, record.file_name, record.boxes, record.labels, rels)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"Open Images annotation file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, "file", f"not valid JSON ({exc})") from exc


def _parse_entry(
    entry: Any, index: int, path: Path, num_classes: int, num_predicates: int
) -> SceneGraphRecord:
    where = f"record {index}"
    if not isinstance(entry, dict):
        raise AnnotationError(path, where, f"expected an object, got {type(entry).__name__}")
    name = entry.get("img_fn")
    if not isinstance(name, str) or not name:
        raise AnnotationError(path, where, f"'img_fn' must be a non-empty string, got {name!r}")
    where = f"record {index} ({name})"
    raw_boxes = entry.get("bbox")
    if not isinstance(raw_boxes, list):
        raise AnnotationError(path, where, "'bbox' must be a list of [x1, y1, x2, y2]")
    boxes = np.zeros((len(raw_boxes), 4), dtype=np.float32)
    for row, box in enumerate(raw_boxes):
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            raise AnnotationError(path, where, f"bbox[{row}] must be 4 finite numbers, got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise AnnotationError(path, where, f"bbox[{row}] has x2 < x1 or y2 < y1: {box!r}")
        boxes[row] = box
    labels = entry.get("det_labels")
    if not isinstance(labels, list) or len(labels) != len(raw_boxes):
        raise AnnotationError(
            path, where, f"'det_labels' must be a list with one label per box ({len(raw_boxes)})"
        )
    for row, label in enumerate(labels):
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise AnnotationError(
                path, where, f"det_labels[{row}] must be in 0..{num_classes - 1}, got {label!r}"
            )
    rels = check_relations(
        entry.get("rel", []), len(raw_boxes), num_predicates, offset=0, path=path, where=where
    )
    return SceneGraphRecord(
        image_id=index,
        file_name=f"{name}.jpg",
        boxes=boxes,
        labels=np.asarray(labels, dtype=np.int64),
        rels=rels,
    )
