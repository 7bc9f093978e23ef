"""The rows of clip4dm's JSON Lines outputs, written and read here only.

``clip4dm detect --pairs`` and ``clip4dm eval`` write one row per input item:

- a result row is ``{"id", "image", **Detection.to_dict()}``; an ``eval`` row adds what the
  benchmark says about the sample: ``ground_truth``, ``prediction``, ``correct`` and, where the
  benchmark has them, ``correct_exact``, ``group``, ``pair``, ``human_score``, ``tp``/``fp``/``fn``,
  ``nli_score``, ``meta``;
- an error row is ``{"id", <where>, "error"}``, where ``line`` (the line number in a JSON Lines
  or CSV pairs file), ``row`` (the row number in a Parquet pairs file) or ``record`` (a benchmark
  file and record) names the input item; an ``eval`` error row also keeps
  the sample's ``image`` and ``caption`` when they are known.

Each value has one name. Rows written by earlier versions are read with their old names renamed
(`upgrade`): ``gt_score`` is now ``human_score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from clip4dm.results import Detection

if TYPE_CHECKING:
    from clip4dm.eval.samples import Judgement, Record, Sample

__all__ = [
    "ERROR",
    "RENAMED",
    "DetectionLike",
    "detection_of",
    "is_error",
    "pair_error_row",
    "result_row",
    "sample_error_row",
    "sample_row",
    "upgrade",
]

ERROR = "error"
"""The key that marks an error row."""

RENAMED: dict[str, str] = {"gt_score": "human_score"}
"""Old row keys and the names they have now."""


class DetectionLike(Protocol):
    """What a result row needs from a detection (`clip4dm.Detection` is one)."""

    def to_dict(self) -> dict[str, Any]:
        """The detection's JSON form."""
        ...


def result_row(row_id: str | int, image: str, detection: DetectionLike) -> dict[str, Any]:
    """The row of a scored pair: ``{"id", "image", **detection.to_dict()}``."""
    return {"id": row_id, "image": image, **detection.to_dict()}


def pair_error_row(
    row_id: str | int, line: int, error: str, *, where: str = "line"
) -> dict[str, Any]:
    """The row of a pairs-file record that could not be scored: ``{"id", "line", "error"}``, or
    ``{"id", "row", "error"}`` with ``where="row"`` (a Parquet file's 1-based row number)."""
    return {"id": row_id, where: line, ERROR: error}


def sample_row(
    sample: Sample, detection: Detection, judgement: Judgement, nli_score: float | None
) -> dict[str, Any]:
    """The row of a scored benchmark sample: `result_row` plus the benchmark's fields."""
    row = result_row(sample.id, sample.image_name, detection)  # its caption is the sample's
    row["ground_truth"] = sample.ground_truth.to_dict()
    row["prediction"] = judgement.prediction
    row["correct"] = judgement.correct
    if judgement.exact is not None:
        row["correct_exact"] = judgement.exact
    if sample.group is not None:
        row["group"] = sample.group
    if sample.pair is not None:
        row["pair"] = sample.pair
    if sample.human_score is not None:
        row["human_score"] = sample.human_score
    if judgement.tp is not None:
        row.update(tp=judgement.tp, fp=judgement.fp, fn=judgement.fn)
    if nli_score is not None:
        row["nli_score"] = nli_score
    if sample.meta:
        row["meta"] = dict(sample.meta)
    return row


def sample_error_row(record: Record, error: str) -> dict[str, Any]:
    """The row of a benchmark record that could not be scored: ``{"id", "record", ..., "error"}``
    (with the sample's ``image`` and ``caption`` when the record was read)."""
    from clip4dm.eval.samples import Sample

    row: dict[str, Any] = {"id": record.id, "record": record.source}
    if isinstance(record, Sample):
        row["image"] = record.image_name
        row["caption"] = record.caption
    row[ERROR] = error
    return row


def is_error(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` is an error row."""
    return ERROR in row


def upgrade(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the keys of earlier versions renamed (see `RENAMED`); a new dict."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        new = RENAMED.get(key)
        if new is not None and new not in row:
            out[new] = value
        elif new is None:
            out[key] = value
    return out


def detection_of(row: Mapping[str, Any]) -> Detection:
    """The `Detection` a result row holds.

    Raises ``ValueError`` for an error row or a row whose detection fields are missing or invalid.
    """
    if is_error(row):
        raise ValueError(f"row {row.get('id')!r} is an error row: {row[ERROR]}")
    return Detection.from_dict(row)
