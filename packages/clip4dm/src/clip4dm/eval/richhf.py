"""Rich-HF (RichHF-18K, Liang et al. 2024): text-to-image prompts with per-token misalignment labels.

File: ``test.tfrecord`` of ``tf.train.Example`` records with ``filename``, ``misalignment_score``
(a rating, higher = better aligned) and ``prompt_misalignment_label`` (space-separated labels,
``0`` = misaligned, over the prompt split on any of ``,.?!":;`` and space). Prompts and images are
Pick-a-Pic's, stored per filename stem as ``<stem>.txt`` and ``<stem>.png`` under ``--images-root``
(the layout the authors' download script writes). A JSON Lines export with the same three fields
(plus optional ``prompt`` and ``image``) is read too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip4dm.eval._parse import (
    RecordError,
    as_object,
    get_field,
    get_str,
    image_path,
    read_jsonl,
)
from clip4dm.eval.errors import DataError
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
from clip4dm.eval.tfrecord import Feature, TFExampleError, parse_example, read_records
from clip4dm.results import Detection, WordScore

__all__ = [
    "DELIMITERS",
    "RICH_HF",
    "Token",
    "judge_tokens",
    "load_richhf",
    "predicted_tokens",
    "richhf_tokens",
]

DELIMITERS = ',.?!":; '
_TOKEN = re.compile("[^" + re.escape(DELIMITERS) + "]+")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Token:
    """A Rich-HF prompt token and its character span ``[start, end)``."""

    text: str
    start: int
    end: int


def richhf_tokens(prompt: str) -> list[Token]:
    """The prompt split on any of ``,.?!":;`` and space, empty pieces dropped (RichHF-18K's rule)."""
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(prompt)]


def predicted_tokens(caption: str, selected: Sequence[WordScore]) -> list[int]:
    """Indices of the Rich-HF tokens of ``caption`` that overlap a selected word, by the word's
    character span (`WordScore.start`/``end``, as the detector recorded it).

    Raises ``ValueError`` for a word without a span or whose span does not hold it in ``caption``.
    """
    tokens = richhf_tokens(caption)
    found: set[int] = set()
    for word in selected:
        start, end = word.start, word.end
        if start is None or end is None or caption[start:end] != word.word:
            raise ValueError(
                f"word {word.word!r} #{word.index} (span {start}..{end}) is not a word of "
                f"{caption!r}"
            )
        found.update(i for i, t in enumerate(tokens) if t.start < end and start < t.end)
    return sorted(found)


def judge_tokens(sample: Sample, detection: Detection) -> Judgement:
    """Predicted ``(index, token)`` pairs matched against the labelled ones: TP, FP, FN counts;
    correct (for a misaligned prompt) when at least one is a true positive. Raises
    ``ValueError`` like `predicted_tokens`."""
    tokens = richhf_tokens(sample.caption)
    predicted = set(predicted_tokens(sample.caption, detection.misaligned))
    truth = {index for index, _ in sample.ground_truth.tokens}
    tp = len(predicted & truth)
    return Judgement(
        [[i, tokens[i].text] for i in sorted(predicted)],
        correct=None if sample.ground_truth.aligned else tp > 0,
        tp=tp,
        fp=len(predicted - truth),
        fn=len(truth - predicted),
    )


def _find_image(images: Path, stem: str) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        candidate = images / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return images / f"{stem}.png"


def _sample(
    *,
    filename: str,
    score: float,
    labels: str,
    prompt: str | None,
    image: str | None,
    images: Path,
    where: str,
) -> Sample:
    stem = Path(filename).stem
    if prompt is None:
        prompt_file = images / f"{stem}.txt"
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecordError(f"prompt file {str(prompt_file)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordError(f"cannot read prompt file {str(prompt_file)!r}: {exc}") from exc
    if not prompt.strip():
        raise RecordError("the prompt is empty")
    tokens = richhf_tokens(prompt)
    label_list = labels.split()
    if any(label not in ("0", "1") for label in label_list):
        raise RecordError(f"labels must be 0 or 1, got {labels!r}")
    if len(label_list) != len(tokens):
        raise RecordError(f"{len(label_list)} labels for {len(tokens)} prompt tokens")
    misaligned = tuple(
        (i, t.text)
        for i, (t, label) in enumerate(zip(tokens, label_list, strict=True))
        if label == "0"
    )
    path = image_path(images, image, images) if image is not None else _find_image(images, stem)
    return Sample(
        id=filename,
        image=path,
        caption=prompt,
        ground_truth=GroundTruth(aligned=not misaligned, tokens=misaligned),
        human_score=score,
        image_name=image if image is not None else path.name,
        source=where,
        meta={"filename": filename},
    )


def _one(feature: Feature | None, kind: str, key: str) -> Any:
    values: tuple[Any, ...] = getattr(feature, kind, ()) if feature is not None else ()
    if not values:
        raise RecordError(f"feature {key!r} missing or not a {kind}")
    return values[0]


def _load_tfrecord(path: Path, images: Path, verify_crc: bool) -> list[Record]:
    records: list[Record] = []
    try:
        raw_records = list(read_records(path, verify_crc=verify_crc))
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc}") from exc
    for raw in raw_records:
        where = f"{path.name}: record {raw.index}"
        sample_id = f"record {raw.index}"
        try:
            if raw.data is None:
                raise RecordError(raw.error or "unreadable record")
            try:
                example = parse_example(raw.data)
            except TFExampleError as exc:
                raise RecordError(f"not a tf.train.Example ({exc})") from exc
            raw_name = _one(example.get("filename"), "bytes_list", "filename")
            try:
                filename = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError("'filename' is not UTF-8") from None
            sample_id = filename
            where = f"{where} ({filename})"
            raw_labels = _one(
                example.get("prompt_misalignment_label"), "bytes_list", "prompt_misalignment_label"
            )
            records.append(
                _sample(
                    filename=filename,
                    score=float(
                        _one(example.get("misalignment_score"), "float_list", "misalignment_score")
                    ),
                    labels=raw_labels.decode("utf-8", errors="replace"),
                    prompt=None,
                    image=None,
                    images=images,
                    where=where,
                )
            )
        except RecordError as exc:
            records.append(BadRecord(sample_id, where, f"{where}: {exc}"))
    return dedupe_ids(records)


def _load_jsonl(path: Path, images: Path) -> list[Record]:
    records: list[Record] = []
    for line, item in read_jsonl(path):
        where = f"{path.name}: line {line}"
        name = item.get("filename") if isinstance(item, dict) else None
        sample_id = name if isinstance(name, str) and name else f"line {line}"
        try:
            if isinstance(item, RecordError):
                raise item
            entry = as_object(item)
            score = get_field(entry, "misalignment_score")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise RecordError(f"'misalignment_score' must be a number, got {score!r}")
            prompt = entry.get("prompt")
            image = entry.get("image")
            if prompt is not None and not isinstance(prompt, str):
                raise RecordError("'prompt' must be a string")
            if image is not None and not isinstance(image, str):
                raise RecordError("'image' must be a string")
            records.append(
                _sample(
                    filename=get_str(entry, "filename"),
                    score=float(score),
                    labels=get_str(entry, "prompt_misalignment_label", nonempty=False),
                    prompt=prompt,
                    image=image,
                    images=images,
                    where=f"{where} ({sample_id})",
                )
            )
        except RecordError as exc:
            records.append(BadRecord(sample_id, where, f"{where}: {exc}"))
    return dedupe_ids(records)


def load_richhf(source: DataSource) -> list[Record]:
    """One sample per record (ids are the filenames), from a TFRecord file or a JSONL export.

    Raises `DataError` when the file as a whole cannot be read; a bad record is a `BadRecord`.
    """
    path = Path(source.data).expanduser()
    images = source.images if source.images is not None else path.parent
    if path.suffix.lower() == ".jsonl":
        return _load_jsonl(path, images)
    if path.is_dir():
        raise DataError(f"data path {str(path)!r} is a directory, expected test.tfrecord")
    return _load_tfrecord(path, images, source.verify_crc)


RICH_HF = register_benchmark(
    Benchmark(
        name="richhf",
        title="Rich-HF",
        load=load_richhf,
        judge=judge_tokens,
        mode="threshold",
        positive="misaligned",
        token_prf=True,
        correlation=True,
        data_help="RichHF-18K test.tfrecord (or a .jsonl export); --images-root: a directory with "
        "<stem>.png and <stem>.txt (the Pick-a-Pic image and prompt) per filename",
        aliases=("rich-hf", "richhf-18k", "rich_hf"),
    )
)
