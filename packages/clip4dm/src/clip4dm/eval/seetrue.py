"""SeeTRUE-Feedback (Gordon et al. 2024): image–text pairs with a textual misalignment description.

Sources: the HF dataset ``mismatch-quest/SeeTRUE-Feedback`` split ``test`` (a hub id, or a
directory written by ``Dataset.save_to_disk``; needs the optional ``datasets`` package), or a local
JSON Lines export with the same fields — ``image`` (a path, relative to ``--images-root`` or the file),
``image_caption``, ``caption_misalignment``, ``dataset_source`` and optionally ``id``. Scored by
NLI between the description and the predicted phrases; groups are the source data sets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4dm.eval._parse import (
    RecordError,
    as_object,
    get_field,
    get_str,
    image_path,
    read_jsonl,
)
from clip4dm.eval.errors import DataError
from clip4dm.eval.hat import merge_phrases
from clip4dm.eval.samples import (
    BadRecord,
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

if TYPE_CHECKING:
    from vl_core.images import ImageSource

__all__ = ["DATASET_ID", "SEETRUE_FEEDBACK", "judge_feedback", "load_seetrue", "load_seetrue_rows"]

DATASET_ID = "mismatch-quest/SeeTRUE-Feedback"
SPLIT = "test"


def _datasets() -> Any:
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise DataError(
            "reading SeeTRUE-Feedback in the HF datasets format needs the `datasets` package "
            "(pip install datasets), or give a JSON Lines export (.jsonl) instead"
        ) from None


def load_seetrue(source: DataSource) -> list[Record]:
    """The samples of a ``.jsonl`` export, a ``save_to_disk`` directory, or a hub dataset id.

    Raises `DataError` when the data as a whole cannot be read (or ``datasets`` is missing for
    the HF formats); a bad record is a `BadRecord`.
    """
    path = Path(source.data).expanduser()
    if path.suffix.lower() == ".jsonl":
        return _load_jsonl(path, source.images)
    datasets = _datasets()
    try:
        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
            if hasattr(dataset, "keys") and SPLIT in dataset:
                dataset = dataset[SPLIT]
        elif path.exists():
            raise DataError(
                f"{path.name}: expected a .jsonl export, a saved dataset directory or a hub id"
            )
        else:
            dataset = datasets.load_dataset(source.data, split=SPLIT)
    except DataError:
        raise
    except Exception as exc:  # the datasets library raises many types; report them in one line
        raise DataError(f"cannot load dataset {source.data!r}: {exc}") from exc
    return load_seetrue_rows(dataset, name=source.data)


def _image_loader(rows: Any, index: int) -> Callable[[], ImageSource]:
    def load() -> ImageSource:
        image = rows[index]["image"]
        if isinstance(image, dict):  # an undecoded datasets Image: {"bytes": ..., "path": ...}
            data = image.get("bytes")
            return data if isinstance(data, bytes) else str(image.get("path"))
        return image  # type: ignore[no-any-return]

    return load


def _text_view(rows: Any) -> Any:
    """The rows without the image column, so reading the text does not decode every image."""
    if "image" in getattr(rows, "column_names", ()) and hasattr(rows, "remove_columns"):
        return rows.remove_columns(["image"])
    return rows


def _ground_truth(entry: Any) -> GroundTruth:
    feedback = get_field(entry, "caption_misalignment")
    if feedback is not None and not isinstance(feedback, str):
        raise RecordError(f"'caption_misalignment' must be a string, got {type(feedback).__name__}")
    text = (feedback or "").strip()
    return GroundTruth(aligned=not text, text=text or None)


def _group(entry: Any) -> str | None:
    source = entry.get("dataset_source")
    if source is not None and not isinstance(source, str):
        raise RecordError(f"'dataset_source' must be a string, got {source!r}")
    return source


def load_seetrue_rows(rows: Any, *, name: str = DATASET_ID) -> list[Record]:
    """Samples from dataset rows (a ``datasets.Dataset`` or a list of dicts); ids are positions."""
    texts = _text_view(rows)
    records: list[Record] = []
    for index in range(len(texts)):
        where = f"{name}[{index}]"
        try:
            entry = as_object(texts[index])
            meta = {}
            if "id_in_source_dataset" in entry:
                meta["id_in_source_dataset"] = entry["id_in_source_dataset"]
            records.append(
                Sample(
                    id=str(index),
                    image=_image_loader(rows, index),
                    caption=get_str(entry, "image_caption").strip(),
                    ground_truth=_ground_truth(entry),
                    group=_group(entry),
                    image_name=f"{name}[{index}].image",
                    source=where,
                    meta=meta,
                )
            )
        except RecordError as exc:
            records.append(BadRecord(str(index), where, f"{where}: {exc}"))
    return dedupe_ids(records)


def _load_jsonl(path: Path, images: Path | None) -> list[Record]:
    records: list[Record] = []
    for line, item in read_jsonl(path):
        where = f"{path.name}: line {line}"
        raw_id = item.get("id", line) if isinstance(item, dict) else line
        sample_id = str(raw_id) if isinstance(raw_id, str | int) else str(line)
        try:
            if isinstance(item, RecordError):
                raise item
            entry = as_object(item)
            image = get_str(entry, "image")
            records.append(
                Sample(
                    id=sample_id,
                    image=image_path(images, image, path.parent),
                    caption=get_str(entry, "image_caption").strip(),
                    ground_truth=_ground_truth(entry),
                    group=_group(entry),
                    image_name=image,
                    source=where,
                )
            )
        except RecordError as exc:
            records.append(BadRecord(sample_id, where, f"{where}: {exc}"))
    return dedupe_ids(records)


def judge_feedback(sample: Sample, detection: Detection) -> Judgement:
    """The merged phrases, in caption order, lower-cased and joined by ", " (the NLI hypothesis)."""
    phrases = merge_phrases(detection.words, detection.misaligned)
    return Judgement(", ".join(p.text.lower() for p in phrases))


SEETRUE_FEEDBACK = register_benchmark(
    Benchmark(
        name="seetrue-feedback",
        title="SeeTRUE-Feedback",
        load=load_seetrue,
        judge=judge_feedback,
        mode="threshold",
        positive="aligned",
        localisation=False,
        nli=True,
        group_by="source",
        needs_images=False,
        data_help=f"a .jsonl export, a save_to_disk directory, or the hub id {DATASET_ID} "
        "(needs `datasets`)",
        aliases=("seetrue", "seetrue_feedback"),
    )
)
