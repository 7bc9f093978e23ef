"""Resumable batch detection over a JSON Lines file of (image, caption) pairs.

Input: one JSON object per line, ``{"id": ..., "image": "path", "text": "caption"}``; ``id`` is
optional (default: the 1-based line number); a relative ``image`` is resolved against
``images_root`` or else the pairs file's directory. Output: one JSON object per line,
``{"id", "image", **Detection.to_dict()}``, or ``{"id", "line", "error"}`` for a pair that could not
be scored. Each row is appended with one write and flushed, so an interrupted run loses at most
the line being written; a rerun repairs that line, keeps the finished rows, retries the error rows
and computes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from clip4dm.jsonl import ResultsFileError, RowWriter, error_text, id_key, load_existing
from vl_core.images import load_image

__all__ = ["BatchSummary", "DetectionLike", "DetectorLike", "PairsError", "run_pairs"]

PairId = str | int


class DetectionLike(Protocol):
    """What the runner needs from a detection result."""

    def to_dict(self) -> dict[str, Any]: ...


class DetectorLike(Protocol):
    """What the runner needs from a detector (`clip4dm.CLIP4DM` is one)."""

    def detect(self, image: Image.Image, text: str) -> DetectionLike: ...

    def detect_batch(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        progress: bool = ...,
    ) -> Sequence[DetectionLike]: ...


class PairsError(ResultsFileError):
    """The pairs or output file as a whole cannot be used (not one bad line: those become rows)."""


@dataclass
class BatchSummary:
    """Counts of one run: rows computed now, pairs already in the output, error rows written;
    error rows of earlier runs taken out to retry, and unusable output lines dropped (e.g. the
    torn last line of an interrupted run)."""

    done: int = 0
    skipped: int = 0
    errors: int = 0
    retried: int = 0
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.done} done, {self.skipped} skipped, {self.errors} errors"


@dataclass(frozen=True)
class _Pair:
    line: int
    id: PairId
    image: str
    path: Path
    text: str


@dataclass(frozen=True)
class _BadLine:
    line: int
    id: PairId
    error: str


def _parse_line(raw: str, line: int, root: Path) -> _Pair | _BadLine:
    """One pairs line as a pair to score, or the reason it cannot be one."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _BadLine(line, line, f"invalid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return _BadLine(line, line, f"expected a JSON object, got {type(obj).__name__}")
    pair_id = obj.get("id", line)
    if isinstance(pair_id, bool) or not isinstance(pair_id, str | int):
        return _BadLine(line, line, f"'id' must be a string or an integer, got {pair_id!r}")
    missing = [key for key in ("image", "text") if key not in obj]
    if missing:
        return _BadLine(line, pair_id, f"missing field(s): {', '.join(missing)}")
    image, text = obj["image"], obj["text"]
    if not isinstance(image, str) or not image.strip():
        return _BadLine(line, pair_id, "'image' must be a non-empty path string")
    if not isinstance(text, str):
        return _BadLine(line, pair_id, f"'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        return _BadLine(line, pair_id, "'text' is empty or whitespace-only")
    path = Path(image).expanduser()
    if not path.is_absolute():
        path = root / path
    return _Pair(line, pair_id, image, path, text)


def _read_pairs(pairs_path: Path, root: Path) -> list[_Pair | _BadLine]:
    """Every non-blank line of the pairs file, parsed; duplicate ids become bad lines."""
    try:
        with pairs_path.open(encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError as exc:
        raise PairsError(f"pairs file {str(pairs_path)!r} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsError(f"cannot read pairs file {str(pairs_path)!r}: {exc}") from exc
    entries: list[_Pair | _BadLine] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        entry = _parse_line(raw, number, root)
        if isinstance(entry, _Pair):
            key = id_key(entry.id)
            if key in first_line:
                entry = _BadLine(
                    number, entry.id, f"duplicate id {entry.id!r} (first on line {first_line[key]})"
                )
            else:
                first_line[key] = number
        entries.append(entry)
    return entries


def run_pairs(
    pairs_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    detector: DetectorLike | Callable[[], DetectorLike],
    *,
    batch_size: int = 32,
    images_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Score every pair of ``pairs_path`` not yet in ``out_path``, appending rows to it.

    ``detector`` may be a zero-argument factory, called when the first batch is ready (so a run
    with nothing left to score, or only bad lines, never loads the model). Images are loaded and
    checked pair by pair before batching, and a batch that fails as a whole is retried pair by
    pair, so one bad input yields one error row and never costs the rest of its batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs_file, out_file = Path(pairs_path), Path(out_path)
    root = Path(images_root).expanduser() if images_root is not None else pairs_file.parent
    entries = _read_pairs(pairs_file, root)
    done_ids, retried, dropped = load_existing(out_file)
    summary = BatchSummary(retried=retried, dropped=dropped)
    todo: list[_Pair | _BadLine] = []
    for entry in entries:
        if isinstance(entry, _Pair) and id_key(entry.id) in done_ids:
            summary.skipped += 1
        else:
            todo.append(entry)
    if not todo:
        return summary

    resolved: DetectorLike | None = None

    writer = RowWriter(out_file)
    with (
        contextlib.closing(writer),
        tqdm(total=len(todo), desc="clip4dm", unit="pair", disable=not progress) as bar,
    ):

        def record_error(line: int, pair_id: PairId, error: str) -> None:
            writer.write({"id": pair_id, "line": line, "error": error})
            summary.errors += 1
            bar.update(1)

        ready: list[tuple[_Pair, Image.Image]] = []
        # Pairs of one batch that share an image file share the loaded image, which lets the
        # detector encode it once.
        loaded: dict[Path, Image.Image] = {}

        def score_ready() -> None:
            nonlocal resolved
            if not ready:
                return
            if resolved is None:  # load the model now, without counting it in the pair rate
                bar.clear()
                resolved = detector() if callable(detector) else detector
                bar.unpause()
            _score_chunk(resolved, ready, writer, summary)
            bar.update(len(ready))
            ready.clear()
            loaded.clear()

        for entry in todo:
            if isinstance(entry, _BadLine):
                record_error(entry.line, entry.id, entry.error)
                continue
            image = loaded.get(entry.path)
            if image is None:
                try:
                    image = loaded[entry.path] = load_image(entry.path)
                except (ValueError, OSError) as exc:
                    record_error(entry.line, entry.id, error_text(exc))
                    continue
            ready.append((entry, image))
            if len(ready) >= batch_size:
                score_ready()
        score_ready()
    return summary


def _score_chunk(
    detector: DetectorLike,
    batch: Sequence[tuple[_Pair, Image.Image]],
    writer: RowWriter,
    summary: BatchSummary,
) -> None:
    """Score one batch; if it raises as a whole, score its pairs one by one to isolate the cause."""
    images = [image for _, image in batch]
    texts = [pair.text for pair, _ in batch]
    try:
        results = list(detector.detect_batch(images, texts, batch_size=len(batch), progress=False))
        if len(results) != len(batch):
            raise RuntimeError(f"detector returned {len(results)} results for {len(batch)} pairs")
    except Exception:  # isolate the failing pair(s) below; the others still get their rows
        for pair, image in batch:
            try:
                single = detector.detect(image, pair.text)
            except Exception as exc:
                writer.write({"id": pair.id, "line": pair.line, "error": error_text(exc)})
                summary.errors += 1
            else:
                writer.write(_result_row(pair, single))
                summary.done += 1
        return
    for (pair, _), result in zip(batch, results, strict=True):
        writer.write(_result_row(pair, result))
        summary.done += 1


def _result_row(pair: _Pair, detection: DetectionLike) -> dict[str, Any]:
    return {"id": pair.id, "image": str(pair.path), **detection.to_dict()}
