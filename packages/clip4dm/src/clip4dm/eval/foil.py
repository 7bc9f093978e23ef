"""FOIL (Shekhar et al. 2017): COCO captions with one noun replaced by a wrong ("foil") word.

File: ``foilv1.0_test_2017.json``, COCO-style ``images[{id, file_name}]`` and
``annotations[{id, image_id, caption, foil_word, foil, target_word}]``; ``foil_word == "ORIG"``
marks an original caption. Images: COCO val2014. Optional references: COCO
``captions_val2014.json`` (the captions of the same image, minus the annotation's own caption).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clip4dm.eval._parse import (
    RecordError,
    as_object,
    get_field,
    get_id,
    get_str,
    image_path,
    parse_records,
    read_json,
)
from clip4dm.eval.errors import DataError
from clip4dm.eval.samples import (
    Benchmark,
    DataSource,
    GroundTruth,
    Judgement,
    Record,
    Sample,
    dedupe_ids,
    register_benchmark,
)
from clip4dm.results import Detection

__all__ = ["FOIL", "coco_references", "judge_word", "load_foil"]

ORIGINAL = "ORIG"


def _list_field(data: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path.name}: expected a list under {key!r} (COCO-style FOIL file)")
    return value


def coco_references(path: Path) -> dict[str, list[tuple[str, str]]]:
    """COCO captions by image id: ``{image_id: [(caption id, caption), ...]}``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path.name}: expected a COCO captions object with 'annotations'")
    refs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for ann in _list_field(data, "annotations", path):
        if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
            refs[str(ann.get("image_id"))].append((str(ann.get("id")), ann["caption"].strip()))
    return dict(refs)


def load_foil(source: DataSource) -> list[Record]:
    """One sample per annotation (ids are the annotation's position in the file)."""
    path = Path(source.data)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path.name}: expected a JSON object with 'images' and 'annotations'")
    files: dict[str, str] = {}
    for image in _list_field(data, "images", path):
        if isinstance(image, dict) and isinstance(image.get("file_name"), str):
            files[str(image.get("id"))] = image["file_name"]
    references = coco_references(source.references) if source.references is not None else {}

    def parse(index: int, item: Any, where: str) -> list[Record]:
        ann = as_object(item)
        ann_id = get_id(ann, "id")
        image_id = get_id(ann, "image_id")
        caption = get_str(ann, "caption").strip()
        foil_word = get_str(ann, "foil_word").strip()
        if image_id not in files:
            raise RecordError(f"image_id {image_id} has no entry in 'images'")
        aligned = foil_word == ORIGINAL
        refs = tuple(text for ref_id, text in references.get(image_id, ()) if ref_id != ann_id)
        meta = {"annotation_id": get_field(ann, "id"), "image_id": get_field(ann, "image_id")}
        if "target_word" in ann:
            meta["target_word"] = ann["target_word"]
        return [
            Sample(
                id=str(index),
                image=image_path(source.images, files[image_id], path.parent),
                caption=caption,
                ground_truth=GroundTruth(aligned=aligned, words=() if aligned else (foil_word,)),
                references=refs,
                image_name=files[image_id],
                source=where,
                meta=meta,
            )
        ]

    annotations = _list_field(data, "annotations", path)
    return dedupe_ids(
        parse_records(
            annotations, lambda i: f"{path.name}: annotations[{i}]", lambda i: [str(i)], parse
        )
    )


def judge_word(sample: Sample, detection: Detection, template: str) -> Judgement:
    """The lowest-scoring selected word; correct when it equals the foil word (lower-cased)."""
    lowest = min(detection.misaligned, key=lambda w: w.score, default=None)
    prediction = lowest.word.lower() if lowest is not None else None
    truth = sample.ground_truth
    if truth.aligned:
        return Judgement(prediction)
    return Judgement(prediction, correct=prediction == truth.words[0].lower())


FOIL = register_benchmark(
    Benchmark(
        name="foil",
        title="FOIL",
        load=load_foil,
        judge=judge_word,
        mode="most_negative",
        positive="aligned",
        data_help="foilv1.0_test_2017.json; --images: COCO val2014 images; "
        "--references: COCO captions_val2014.json (optional, for RefCLIPScore)",
    )
)
