"""Visual Genome (VG150) in RelTR's COCO-format files.

Layout under ``root``: ``{train,val,test}.json`` (COCO detection files: ``images[{id, file_name,
width, height}]``, ``annotations[{id, image_id, bbox [x, y, w, h], category_id 1..C}]``,
``categories[{id, name}]``), ``rel.json`` (``{"train": {"<image_id>": [[sub, obj, pred 1..P],
...]}, "val": ..., "test": ..., "rel_categories": [background, P names]}``; ``sub``/``obj`` index
the image's annotations in file order) and ``images/<file_name>``.

Class label = ``category_id - 1``, predicate = ``pred - 1``. Several predicates per pair and
repeated triplets are kept as annotated. An image missing from ``rel.json`` has no relations.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egtr.data.base import (
    AnnotationError,
    SceneGraphDataset,
    SceneGraphRecord,
    check_relations,
)
from egtr.data.transforms import SceneGraphTransform, Stage, build_transforms

SPLITS = ("train", "val", "test")


class VisualGenomeDataset(SceneGraphDataset):
    """VG150 scene graphs: ``(image, target)`` items following the :mod:`egtr.data` contract.

    ``transforms`` defaults to ``build_transforms(split, stage)``; ``flip_predicates`` are the
    predicate pairs that a horizontal flip swaps (see :class:`SceneGraphDataset`); ``image_dir`` defaults to
    ``root/images``. Annotations are parsed (and checked) at construction, images at access.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        stage: Stage = "egtr",
        transforms: SceneGraphTransform | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        flip_predicates: Sequence[Sequence[str]] = (),
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        coco_path = root / f"{split}.json"
        rel_path = root / "rel.json"
        coco = _read_json(coco_path)
        rel_file = _read_json(rel_path)
        object_labels = _categories(coco, coco_path)
        predicate_labels, split_rels = _relations_file(rel_file, rel_path, split)
        records = _parse_records(
            coco, coco_path, split_rels, rel_path, split, len(object_labels), len(predicate_labels)
        )
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


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"Visual Genome annotation file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, "file", f"not valid JSON ({exc})") from exc


def _categories(coco: Any, path: Path) -> list[str]:
    """Category names in id order; ids must be exactly ``1..C``."""
    if not isinstance(coco, dict) or not isinstance(coco.get("categories"), list):
        raise AnnotationError(path, "file", "expected a COCO dict with a 'categories' list")
    by_id: dict[int, str] = {}
    for index, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise AnnotationError(path, f"categories[{index}]", f"needs an integer 'id': {cat!r}")
        by_id[cat["id"]] = str(cat.get("name", f"class_{cat['id'] - 1}"))
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise AnnotationError(path, "categories", f"ids must be 1..C, got {sorted(by_id)}")
    return [by_id[i] for i in range(1, len(by_id) + 1)]


def _relations_file(rel_file: Any, path: Path, split: str) -> tuple[list[str], dict[str, Any]]:
    if not isinstance(rel_file, dict) or not isinstance(rel_file.get("rel_categories"), list):
        raise AnnotationError(path, "file", "expected a dict with a 'rel_categories' list")
    names = rel_file["rel_categories"]
    if len(names) < 2:
        raise AnnotationError(path, "rel_categories", "needs a background entry and predicates")
    split_rels = rel_file.get(split, {})
    if not isinstance(split_rels, dict):
        raise AnnotationError(path, split, "expected {image_id: [[sub, obj, pred], ...]}")
    return [str(name) for name in names[1:]], split_rels


def _parse_records(
    coco: dict[str, Any],
    coco_path: Path,
    split_rels: dict[str, Any],
    rel_path: Path,
    split: str,
    num_classes: int,
    num_predicates: int,
) -> list[SceneGraphRecord]:
    images = coco.get("images")
    annotations = coco.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise AnnotationError(coco_path, "file", "expected 'images' and 'annotations' lists")
    order: list[int] = []
    file_names: dict[int, str] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            raise AnnotationError(
                coco_path, f"images[{index}]", f"needs an integer 'id': {image!r}"
            )
        if not isinstance(image.get("file_name"), str):
            raise AnnotationError(coco_path, f"images[{index}]", "needs a 'file_name' string")
        if image["id"] in file_names:
            raise AnnotationError(coco_path, f"images[{index}]", f"duplicate id {image['id']}")
        file_names[image["id"]] = image["file_name"]
        order.append(image["id"])
    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in order}
    labels: dict[int, list[int]] = {image_id: [] for image_id in order}
    for index, ann in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(ann, dict):
            raise AnnotationError(coco_path, where, f"expected an object, got {ann!r}")
        image_id = ann.get("image_id")
        if image_id not in boxes:
            raise AnnotationError(coco_path, where, f"image_id {image_id!r} is not in 'images'")
        boxes[image_id].append(_xywh_to_xyxy(ann.get("bbox"), coco_path, where))
        category = ann.get("category_id")
        if not isinstance(category, int) or not 1 <= category <= num_classes:
            raise AnnotationError(
                coco_path, where, f"category_id must be in 1..{num_classes}, got {category!r}"
            )
        labels[image_id].append(category - 1)
    records = []
    for image_id in order:
        rels = check_relations(
            split_rels.get(str(image_id), []),
            len(boxes[image_id]),
            num_predicates,
            offset=1,
            path=rel_path,
            where=f"{split}[{str(image_id)!r}]",
        )
        records.append(
            SceneGraphRecord(
                image_id=image_id,
                file_name=file_names[image_id],
                boxes=np.asarray(boxes[image_id], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels[image_id], dtype=np.int64),
                rels=rels,
            )
        )
    return records


def _xywh_to_xyxy(bbox: Any, path: Path, where: str) -> list[float]:
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    ):
        raise AnnotationError(
            path, where, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
        )
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise AnnotationError(path, where, f"bbox has a negative size: {bbox!r}")
    return [x, y, x + w, y + h]
