"""Tiny Visual Genome / Open Images data sets written in the exact public formats (for tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OBJECTS = ["cat", "dog", "table"]
PREDICATES = ["on", "near", "has", "under"]


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


# VG: image id -> (file name, width, height, [(x, y, w, h, category_id)], [[s, o, pred 1..P]])
VG_SPLITS: dict[str, dict[int, tuple[str, int, int, list[tuple[float, ...]], list[list[int]]]]] = {
    "train": {
        11: (
            "11.jpg",
            64,
            48,
            [(2, 3, 20, 10, 1), (30, 5, 15, 30, 3), (10, 20, 8, 8, 2)],
            [[0, 1, 1], [2, 1, 1], [0, 1, 2], [0, 1, 1]],
        ),
        12: ("12.jpg", 50, 70, [(0, 0, 10, 10, 2), (20, 30, 25, 35, 3)], [[0, 1, 4]]),
    },
    "val": {
        21: ("21.jpg", 40, 40, [(5, 5, 10, 10, 1), (20, 20, 10, 10, 2)], [[0, 1, 3]]),
    },
    "test": {
        31: (
            "31.jpg",
            80,
            60,
            [(4, 4, 30, 20, 1), (40, 10, 30, 40, 3), (0, 40, 10, 15, 2)],
            [[0, 1, 1], [2, 1, 2], [0, 2, 3], [0, 1, 1]],
        ),
        32: ("32.png", 60, 90, [(10, 10, 20, 20, 2), (15, 50, 50, 45, 3)], [[0, 1, 4]]),
        33: ("33.jpg", 70, 50, [(3, 3, 10, 10, 3)], []),
    },
}


def write_tiny_vg(root: Path, *, images: bool = True) -> Path:
    """RelTR-format VG under ``root``: {train,val,test}.json, rel.json, images/."""
    root.mkdir(parents=True, exist_ok=True)
    rel: dict[str, Any] = {"rel_categories": ["__background__", *PREDICATES]}
    ann_id = 1
    for split, entries in VG_SPLITS.items():
        coco: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(OBJECTS)],
        }
        rel[split] = {}
        for image_id, (name, width, height, boxes, rels) in entries.items():
            coco["images"].append(
                {"id": image_id, "file_name": name, "width": width, "height": height}
            )
            for x, y, w, h, cat in boxes:
                coco["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "bbox": [x, y, w, h],
                        "category_id": cat,
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
            if rels:
                rel[split][str(image_id)] = rels
            if images:
                write_image(root / "images" / name, width, height, seed=image_id)
        (root / f"{split}.json").write_text(json.dumps(coco))
    (root / "rel.json").write_text(json.dumps(rel))
    return root


def oi_records() -> dict[str, list[dict[str, Any]]]:
    """Open Images records per split (boxes xyxy, labels/predicates 0-based)."""
    crowded = {
        "img_fn": "crowded",
        "bbox": [[i % 50, 0, i % 50 + 5, 5] for i in range(201)],
        "det_labels": [i % 3 for i in range(201)],
        "rel": [[0, 1, 0]],
    }
    return {
        "train": [
            {"img_fn": "a1", "bbox": [[1, 2, 20, 30], [25, 5, 60, 40], [5, 35, 15, 45]],
             "det_labels": [0, 2, 1],
             "rel": [[0, 1, 0], [0, 1, 0], [0, 1, 2], [2, 1, 1], [0, 1, 3], [2, 1, 1]]},
            crowded,
            {"img_fn": "a2", "bbox": [[0, 0, 10, 10], [12, 12, 30, 30]], "det_labels": [1, 0],
             "rel": [[1, 0, 3]]},
        ],
        "val": [
            {"img_fn": "v1", "bbox": [[0, 0, 10, 10], [5, 5, 20, 20]], "det_labels": [0, 1],
             "rel": [[0, 1, 1]]},
        ],
        "test": [
            {"img_fn": "t1", "bbox": [[2, 2, 30, 20], [35, 8, 60, 45], [0, 30, 12, 44]],
             "det_labels": [0, 2, 1], "rel": [[0, 1, 0], [0, 1, 0], [2, 1, 1]]},
            crowded,
        ],
    }  # fmt: skip


OI_SIZES = {"a1": (64, 48), "a2": (40, 40), "v1": (30, 30), "t1": (64, 50), "crowded": (60, 20)}


def write_tiny_oi(root: Path, *, images: bool = True) -> Path:
    """BGNN/PySGG-format Open Images under ``root``: annotations/ and images/."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "categories_dict.json").write_text(json.dumps({"obj": OBJECTS, "rel": PREDICATES}))
    for split, records in oi_records().items():
        (ann / f"vrd-{split}-anno.json").write_text(json.dumps(records))
        if images:
            for seed, record in enumerate(records):
                width, height = OI_SIZES[record["img_fn"]]
                write_image(root / "images" / f"{record['img_fn']}.jpg", width, height, seed)
    return root
