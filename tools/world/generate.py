"""Write a shapes world to a folder: images, scenes, FOIL, HAT and Visual Genome files.

Usage::

    python -m tools.world --seed 0 --out DIR --train N --val N --test N [--size 128]
    python tools/world/generate.py ...   (same)

Layout of ``DIR``::

    images/{split}_{index:06d}.png     every split's images (COCO ``file_name`` is relative here)
    scenes/{split}.jsonl              one row per image: shapes, boxes, captions, foils, relations
    foil/{split}.json                 FOIL format (foilv1.0_test_2017.json): images + annotations
    hat/{split}.json                  HAT format (hat-trainval.json); image_path relative to images/
    pairs/{split}.jsonl               ``clip4dm detect --pairs`` input: each FOIL caption as a pair
    vg/{train,val,test}.json          Visual Genome (RelTR COCO files)
    vg/rel.json                       {"train"|"val"|"test": {image_id: [[sub, obj, pred]]},
                                       "rel_categories": ["__background__", ...]}
    world.json                        seed, size, counts, vocabulary

Everything is a function of (seed, split, index): image ``i`` of a split does not depend on how
many images are asked for, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``tools.world`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from tools.world.captions import (
    Caption,
    Foil,
    Hallucination,
    sample_foils,
    sample_hallucination,
    true_captions,
)
from tools.world.relations import PREDICATES, scene_relations
from tools.world.scene import COLOURS, SHAPES, SIZES, Scene, render, sample_scene
from vl_core.files import atomic_write, write_json

SPLITS: dict[str, int] = {"train": 1, "val": 2, "test": 3}
FORMAT_VERSION = 1
CAPTIONS_PER_IMAGE = 3
FOILS_PER_CAPTION = 2


def image_id(split: str, index: int) -> int:
    """Globally unique image id: ``split code * 10^7 + index``."""
    return SPLITS[split] * 10_000_000 + index


@dataclass(frozen=True)
class Sample:
    """One generated image with everything said about it."""

    split: str
    index: int
    scene: Scene
    captions: list[Caption]
    foils: list[list[Foil]]  # per caption
    hallucination: Hallucination | None  # of captions[-1] (or captions[0])

    @property
    def id(self) -> int:
        return image_id(self.split, self.index)

    @property
    def file_name(self) -> str:
        return f"{self.split}_{self.index:06d}.png"


def make_sample(seed: int, split: str, index: int, size: int) -> Sample:
    """The sample ``index`` of ``split`` for ``seed`` (independent of every other sample)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    scene = sample_scene(rng, size)
    captions = true_captions(scene, rng, CAPTIONS_PER_IMAGE)
    foils = [sample_foils(scene, c, rng, FOILS_PER_CAPTION) for c in captions]
    hallucination = sample_hallucination(scene, captions[-1], rng)
    return Sample(split, index, scene, captions, foils, hallucination)


def scene_row(sample: Sample) -> dict[str, Any]:
    scene = sample.scene
    return {
        "id": sample.id,
        "file_name": sample.file_name,
        "width": scene.size,
        "height": scene.size,
        "background": {
            "kind": scene.background.kind,
            "rgb": list(scene.background.rgb),
            "rgb2": list(scene.background.rgb2),
            "noise": round(scene.background.noise, 3),
        },
        "shapes": [
            {
                "shape": s.shape,
                "colour": s.colour,
                "size": s.size,
                "bbox": coco_box(s.box),
                "rgb": list(s.rgb),
            }
            for s in scene.shapes
        ],
        "captions": [c.text for c in sample.captions],
        "foils": [
            [
                {
                    "caption": f.caption.text,
                    "kind": f.kind,
                    "index": f.index,
                    "target_word": f.target,
                    "foil_word": f.foil,
                }
                for f in per_caption
            ]
            for per_caption in sample.foils
        ],
        "relations": [[i, j, p] for i, j, p in scene_relations(scene.shapes)],
    }


def coco_box(box: tuple[float, float, float, float]) -> list[float]:
    """``x0, y0, x1, y1`` -> COCO ``[x, y, w, h]``."""
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def foil_file(samples: Sequence[Sample]) -> dict[str, Any]:
    """FOIL (foilv1.0_test_2017.json): the first caption of each image plus its foils."""
    images = [{"id": s.id, "file_name": s.file_name} for s in samples]
    annotations: list[dict[str, Any]] = []
    for s in samples:
        original = s.captions[0]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": s.id,
                "caption": original.text,
                "foil_word": "ORIG",
                "target_word": "ORIG",
                "foil": False,
            }
        )
        for f in s.foils[0]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": s.id,
                    "caption": f.caption.text,
                    "foil_word": f.foil,
                    "target_word": f.target,
                    "foil": True,
                    "foil_kind": f.kind,
                    "foil_word_index": f.index,
                }
            )
    return {
        "info": {"description": "shapes world, FOIL format"},
        "images": images,
        "annotations": annotations,
    }


def hat_file(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """HAT (hat-trainval.json): per image one clean caption and one hallucinated one."""
    rows: list[dict[str, Any]] = []
    for s in samples:
        clean = s.captions[0]
        references = [c.text for c in s.captions[:-1]]
        entries: list[tuple[Caption, tuple[int, ...]]] = [(clean, ())]
        if s.hallucination is not None:
            entries.append((s.hallucination.caption, s.hallucination.changed))
        for caption, changed in entries:
            words = caption.words()
            rows.append(
                {
                    "sample_id": f"{s.id}_{len(rows)}",
                    "caption": caption.text,
                    "grounding": [[w, i in changed] for i, w in enumerate(words)],
                    "contains_hallucination": bool(changed),
                    "image_path": s.file_name,
                    "references": references,
                }
            )
    return rows


def pairs_lines(samples: Sequence[Sample]) -> list[str]:
    """``clip4dm detect --pairs`` lines (image paths relative to the pairs file's folder)."""
    lines = []
    for s in samples:
        entries: list[tuple[str, str, str | None]] = [("orig", s.captions[0].text, None)]
        entries += [(f"foil{k + 1}", f.caption.text, f.foil) for k, f in enumerate(s.foils[0])]
        for suffix, text, foil_word in entries:
            row = {
                "id": f"{s.id}-{suffix}",
                "image": f"../images/{s.file_name}",
                "text": text,
                "foil_word": foil_word,
            }
            lines.append(json.dumps(row))
    return lines


def vg_files(samples: Sequence[Sample]) -> tuple[dict[str, Any], dict[str, list[list[int]]]]:
    """One split's COCO detection file and its ``rel.json`` entry."""
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)
    ]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    relations: dict[str, list[list[int]]] = {}
    for s in samples:
        images.append(
            {"id": s.id, "file_name": s.file_name, "width": s.scene.size, "height": s.scene.size}
        )
        for k, shape in enumerate(s.scene.shapes):
            bbox = coco_box(shape.box)
            annotations.append(
                {
                    "id": s.id * 10 + k + 1,
                    "image_id": s.id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "category_id": SHAPES.index(shape.shape) + 1,
                    "colour": shape.colour,
                    "size": shape.size,
                }
            )
        relations[str(s.id)] = [
            [i, j, PREDICATES.index(p) + 1] for i, j, p in scene_relations(s.scene.shapes)
        ]
    coco = {
        "info": {"description": "shapes world, Visual Genome (RelTR COCO) format"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return coco, relations


def _dump(path: Path, payload: object) -> None:
    write_json(path, payload, indent=1)


def _build(job: tuple[int, str, int, int, str | None]) -> Sample:
    """Make one sample and, when ``job`` names a folder, save its image there."""
    seed, split, index, size, folder = job
    sample = make_sample(seed, split, index, size)
    if folder is not None:
        render(sample.scene).save(Path(folder) / sample.file_name, format="PNG", optimize=True)
    return sample


def write_world(
    out: str | Path,
    *,
    seed: int,
    counts: dict[str, int],
    size: int = 128,
    images: bool = True,
    jobs: int = 1,
) -> Path:
    """Generate ``counts[split]`` samples per split into ``out`` (see the module doc), with
    ``jobs`` worker processes (the output does not depend on it)."""
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    folder = str(root / "images") if images else None
    rel: dict[str, Any] = {}
    for split in SPLITS:
        todo = [(seed, split, i, size, folder) for i in range(counts.get(split, 0))]
        if jobs > 1 and len(todo) > 1:
            with multiprocessing.get_context("spawn").Pool(jobs) as pool:
                samples = pool.map(_build, todo, chunksize=64)
        else:
            samples = [_build(job) for job in todo]
        lines = [json.dumps(scene_row(s), separators=(",", ":")) for s in samples]
        atomic_write(root / "scenes" / f"{split}.jsonl", "".join(line + "\n" for line in lines))
        _dump(root / "foil" / f"{split}.json", foil_file(samples))
        _dump(root / "hat" / f"{split}.json", hat_file(samples))
        pairs = "".join(line + "\n" for line in pairs_lines(samples))
        atomic_write(root / "pairs" / f"{split}.jsonl", pairs)
        coco, relations = vg_files(samples)
        _dump(root / "vg" / f"{split}.json", coco)
        rel[split] = relations
    rel["rel_categories"] = ["__background__", *PREDICATES]
    _dump(root / "vg" / "rel.json", rel)
    _dump(
        root / "world.json",
        {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "size": size,
            "counts": {k: counts.get(k, 0) for k in SPLITS},
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "sizes": {k: list(v) for k, v in SIZES.items()},
            "predicates": list(PREDICATES),
        },
    )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.world",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=0)
    parser.add_argument("--val", type=int, default=0)
    parser.add_argument("--test", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    if min(counts.values()) < 0 or args.size < 32:
        parser.error("counts must be >= 0 and --size >= 32")
    root = write_world(args.out, seed=args.seed, counts=counts, size=args.size, jobs=args.jobs)
    print(f"wrote {sum(counts.values())} images to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
