"""FOIL (Shekhar et al. 2017): COCO captions with one noun replaced by a wrong ("foil") word.

File: ``foilv1.0_test_2017.json``, COCO-style ``images[{id, file_name}]`` and
``annotations[{id, image_id, caption, foil_word, foil, target_word}]``; ``foil_word == "ORIG"``
marks an original caption. Images: COCO val2014. Optional references: COCO
``captions_val2014.json`` (the captions of the same image, minus the annotation's own caption).

Optional annotation fields (the shapes world's files carry them): ``foil_word_index``, the
position of the foil word among the caption's whitespace-separated words (then ``LA_exact`` is
reported), and ``foil_kind`` (then the metrics are also given per kind, in ``groups``). Captions
of one image are paired: the ``pairwise`` metric is how often the CLIP scores the image's original
captions above its foils.
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
from clip4dm.eval._positions import chunk_positions, chunk_word
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
    """COCO captions by image id: ``{image_id: [(caption id, caption), ...]}``.

    Raises `DataError` when the file is not a COCO captions object.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path.name}: expected a COCO captions object with 'annotations'")
    refs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for ann in _list_field(data, "annotations", path):
        if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
            refs[str(ann.get("image_id"))].append((str(ann.get("id")), ann["caption"].strip()))
    return dict(refs)


def load_foil(source: DataSource) -> list[Record]:
    """One sample per annotation (ids are the annotation's position in the file).

    Raises `DataError` when the file is not a FOIL object with ``images`` and ``annotations``;
    a malformed annotation becomes an error record instead.
    """
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
        kind = None if aligned else _foil_kind(ann)
        positions = () if aligned else _foil_positions(ann, caption, foil_word)
        return [
            Sample(
                id=str(index),
                image=image_path(source.images, files[image_id], path.parent),
                caption=caption,
                ground_truth=GroundTruth(
                    aligned=aligned, words=() if aligned else (foil_word,), positions=positions
                ),
                group=kind,
                references=refs,
                image_name=files[image_id],
                source=where,
                meta=meta,
                pair=image_id,
            )
        ]

    annotations = _list_field(data, "annotations", path)
    return dedupe_ids(
        parse_records(
            annotations, lambda i: f"{path.name}: annotations[{i}]", lambda i: [str(i)], parse
        )
    )


def _foil_kind(ann: Mapping[str, Any]) -> str | None:
    kind = ann.get("foil_kind")
    if kind is not None and not isinstance(kind, str):
        raise RecordError(f"'foil_kind' must be a string, got {type(kind).__name__}")
    return kind


def _foil_positions(ann: Mapping[str, Any], caption: str, foil_word: str) -> tuple[int, ...]:
    """clip4dm's word position of the foil word, from the optional ``foil_word_index``."""
    index = ann.get("foil_word_index")
    if index is None:
        return ()
    if not isinstance(index, int) or isinstance(index, bool):
        raise RecordError(f"'foil_word_index' must be an integer, got {index!r}")
    try:
        named = chunk_word(caption, index)
    except IndexError as exc:
        raise RecordError(f"'foil_word_index': {exc}") from None
    if named.lower() != foil_word.lower():
        raise RecordError(
            f"'foil_word_index' {index} names {named!r}, not the foil word {foil_word!r}"
        )
    return chunk_positions(caption, [index])


def judge_word(sample: Sample, detection: Detection) -> Judgement:
    """The lowest-scoring selected word; correct when it equals the foil word (lower-cased);
    exact when it is also at the foil word's position (where the data gives it)."""
    lowest = min(detection.misaligned, key=lambda w: w.score, default=None)
    prediction = lowest.word.lower() if lowest is not None else None
    truth = sample.ground_truth
    if truth.aligned:
        return Judgement(prediction)
    exact = (lowest is not None and lowest.index in truth.positions) if truth.positions else None
    return Judgement(prediction, correct=prediction == truth.words[0].lower(), exact=exact)


FOIL = register_benchmark(
    Benchmark(
        name="foil",
        title="FOIL",
        load=load_foil,
        judge=judge_word,
        mode="most_negative",
        positive="aligned",
        data_help="foilv1.0_test_2017.json; --images-root: COCO val2014 images; "
        "--references: COCO captions_val2014.json (optional, for RefCLIPScore)",
        group_by="foil_kind",
    )
)
