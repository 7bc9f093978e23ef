"""Batch detection: the runner shared by ``detect --pairs`` and ``eval``, and resumable pairs files.

`BatchRunner` scores a batch of items with one detector: it loads the images (each file once per
batch, so the detector encodes it once), turns an image that cannot be loaded into an error for
that item alone, scores the rest in one call, and scores them one by one if that call fails, so
one bad input never costs the others.

`run_pairs` applies it to a JSON Lines file of pairs, one ``{"id": ..., "image": "path",
"text": "caption"}`` per line (``id`` optional: the 1-based line number; a relative ``image`` is
resolved against ``images_root`` or else the pairs file's directory). Rows (`clip4dm.rows`) are
appended one complete line at a time and flushed, so an interrupted run loses at most the line
being written; a rerun repairs that line, keeps the finished rows, retries the error rows and
computes the rest. ``<out>.run.json`` records the pairs file's fingerprint and the settings: a
rerun over a changed pairs file or with other settings is refused unless ``overwrite``, which
starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from clip4dm._lines import read_lines
from clip4dm.rows import DetectionLike, pair_error_row, result_row
from vl_core.files import (
    ResultsFileError,
    RowWriter,
    check_manifest,
    error_text,
    file_fingerprint,
    id_key,
    read_results,
    refuse_input_as_output,
)

if TYPE_CHECKING:
    from PIL import Image

    from vl_core.images import ImageSource

__all__ = [
    "BatchRunner",
    "BatchSummary",
    "DetectionLike",
    "DetectorLike",
    "ImageRef",
    "Item",
    "PairsError",
    "manifest_path",
    "run_pairs",
]

PairId = str | int
ImageRef = str | os.PathLike[str] | Callable[[], "ImageSource"]
"""A path, or a zero-argument callable returning the image (decoded lazily, e.g. from a dataset)."""


class DetectorLike(Protocol):
    """What the runner needs from a detector (`clip4dm.CLIP4DM` is one).

    ``references`` is passed only for items that have reference captions.
    """

    def detect(self, image: Image.Image, text: str) -> DetectionLike:
        """One pair's detection."""
        ...

    def detect_batch(
        self, images: Sequence[Image.Image], texts: Sequence[str], *, batch_size: int = ...
    ) -> Sequence[DetectionLike]:
        """One detection per pair, in order."""
        ...


@dataclass(frozen=True)
class Item:
    """One (image, text) pair to score; ``references`` (reference captions) ask for RefCLIPScore."""

    image: ImageRef
    text: str
    references: Sequence[str] | None = None


class BatchRunner:
    """Scores batches of `Item` with one detector, loaded at first need.

    ``detector`` may be a zero-argument factory, called when the first batch with a loadable
    image is scored, so a run with nothing to score never loads the model. ``pause`` makes the
    context the factory runs in (e.g. a progress bar put aside while the model loads).
    """

    def __init__(
        self,
        detector: DetectorLike | Callable[[], DetectorLike],
        *,
        pause: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self._source = detector
        self._detector: DetectorLike | None = None if callable(detector) else detector
        self._pause = pause

    def detector(self) -> DetectorLike:
        """The detector, made by the factory on the first call; raises what the factory raises."""
        if self._detector is None:
            factory = self._source
            assert callable(factory)
            with self._pause():
                self._detector = factory()
        return self._detector

    def score(self, items: Sequence[Item]) -> list[DetectionLike | str]:
        """One result per item, in order: its detection, or the text of the error that stands
        for it (an image that cannot be loaded, or a pair the detector fails on).

        Raises only what loading the detector raises (and ``KeyboardInterrupt``).
        """
        out: list[DetectionLike | str] = ["" for _ in items]
        images: dict[int, Image.Image] = {}
        cache: dict[str, Image.Image] = {}  # items sharing an image file share one loaded image
        for position, item in enumerate(items):
            try:
                images[position] = _load(item.image, cache)
            except Exception as exc:  # unreadable image, or a dataset that fails to decode it
                out[position] = error_text(exc)
        if not images:
            return out
        detector = self.detector()
        for with_references in (False, True):
            group = [i for i in images if (items[i].references is not None) is with_references]
            if group:
                self._score_group(detector, items, images, group, out)
        return out

    @staticmethod
    def _score_group(
        detector: DetectorLike,
        items: Sequence[Item],
        images: Mapping[int, Image.Image],
        group: Sequence[int],
        out: list[DetectionLike | str],
    ) -> None:
        """Score ``group`` in one call; if it raises as a whole, pair by pair to isolate the cause."""
        pictures = [images[i] for i in group]
        texts = [items[i].text for i in group]
        references = [list(items[i].references or ()) for i in group]
        extra: dict[str, Any] = {"references": references} if items[group[0]].references else {}
        try:
            found = list(detector.detect_batch(pictures, texts, batch_size=len(group), **extra))
            if len(found) != len(group):
                raise RuntimeError(f"detector returned {len(found)} results for {len(group)} pairs")
        except Exception:  # isolate the failing pair(s) below; the others still get their rows
            for position, i in enumerate(group):
                single: dict[str, Any] = {"references": references[position]} if extra else {}
                try:
                    out[i] = detector.detect(pictures[position], texts[position], **single)
                except Exception as exc:
                    out[i] = error_text(exc)
            return
        for i, detection in zip(group, found, strict=True):
            out[i] = detection


def _load(source: ImageRef, cache: dict[str, Image.Image]) -> Image.Image:
    from vl_core.images import load_image

    if callable(source):
        return load_image(source())
    key = os.fspath(source)
    if key not in cache:
        cache[key] = load_image(key)
    return cache[key]


# -- pairs files ----------------------------------------------------------------------------------


class PairsError(ResultsFileError):
    """The pairs or output file as a whole cannot be used (not one bad line: those become rows)."""


@dataclass
class BatchSummary:
    """Counts of one run: rows computed now, pairs already in the output, error rows written;
    error rows of earlier runs taken out to retry, and what was repaired in the output (the torn
    last line of an interrupted run)."""

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
    """Every non-blank line of the pairs file, parsed; duplicate ids and lines that are not UTF-8
    become bad lines. Raises `PairsError` when the file cannot be read."""
    entries: list[_Pair | _BadLine] = []
    first_line: dict[str, int] = {}
    try:
        for line in read_lines(pairs_path):
            if line.text is None:
                entries.append(_BadLine(line.number, line.number, line.error or "unreadable line"))
                continue
            entry = _parse_line(line.text, line.number, root)
            if isinstance(entry, _Pair):
                key = id_key(entry.id)
                if key in first_line:
                    entry = _BadLine(
                        line.number,
                        entry.id,
                        f"duplicate id {entry.id!r} (first on line {first_line[key]})",
                    )
                else:
                    first_line[key] = line.number
            entries.append(entry)
    except FileNotFoundError as exc:
        raise PairsError(f"pairs file {str(pairs_path)!r} not found") from exc
    except OSError as exc:
        raise PairsError(f"cannot read pairs file {str(pairs_path)!r}: {exc.strerror}") from exc
    return entries


def manifest_path(out_path: str | os.PathLike[str]) -> Path:
    """Where `run_pairs` keeps the run manifest of ``out_path``: ``<out>.run.json``."""
    out = Path(out_path)
    return out.with_name(out.name + ".run.json")


def run_pairs(
    pairs_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    detector: DetectorLike | Callable[[], DetectorLike],
    *,
    batch_size: int = 32,
    images_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> BatchSummary:
    """Score every pair of ``pairs_path`` not yet in ``out_path``, appending rows to it.

    ``detector`` may be a zero-argument factory (see `BatchRunner`). ``settings`` (JSON values:
    model, mode, epsilon, ...) are recorded with the pairs file's fingerprint in
    `manifest_path`; resuming with a changed pairs file or other settings is refused. With
    ``overwrite`` the output is started over (also when it is not a results file).

    Returns the run's `BatchSummary`. Raises ``ValueError`` for a ``batch_size`` below 1,
    `PairsError` when the pairs file cannot be read, `vl_core.files.OutputExistsError` when the
    output is an input or a file this command did not write, and `vl_core.files.ResultsFileError`
    when the output was made from other inputs or settings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs_file, out_file = Path(pairs_path), Path(out_path)
    manifest = manifest_path(out_file)
    refuse_input_as_output([out_file, manifest], [pairs_file])
    root = Path(images_root).expanduser() if images_root is not None else pairs_file.parent
    entries = _read_pairs(pairs_file, root)
    record = {
        "command": "clip4dm detect --pairs",
        "pairs": file_fingerprint(pairs_file),
        "images_root": None if images_root is None else str(root.resolve()),
        **(settings or {}),
    }
    if not overwrite:
        read_results(out_file, repair=False, retry_errors=False)  # a foreign file is refused
    # Without rows yet, a manifest left by a run that failed early describes nothing.
    check_manifest(manifest, record, overwrite=overwrite or not out_file.exists())
    if overwrite:
        out_file.unlink(missing_ok=True)
    existing = read_results(out_file)
    summary = BatchSummary(retried=existing.retried, dropped=list(existing.repaired))
    todo: list[_Pair | _BadLine] = []
    for entry in entries:
        if isinstance(entry, _Pair) and id_key(entry.id) in existing.done:
            summary.skipped += 1
        else:
            todo.append(entry)
    if not todo:
        return summary

    with (
        RowWriter(out_file) as writer,
        tqdm(total=len(todo), desc="clip4dm", unit="pair", disable=not progress) as bar,
    ):

        @contextlib.contextmanager
        def aside() -> Iterator[None]:  # the model loads without counting in the pair rate
            bar.clear()
            yield
            bar.unpause()

        runner = BatchRunner(detector, pause=aside)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            pairs = [entry for entry in batch if isinstance(entry, _Pair)]
            found = dict(
                zip(
                    (pair.line for pair in pairs),
                    runner.score([Item(pair.path, pair.text) for pair in pairs]),
                    strict=True,
                )
            )
            for entry in batch:
                outcome = entry.error if isinstance(entry, _BadLine) else found[entry.line]
                if isinstance(outcome, str):
                    writer.write(pair_error_row(entry.id, entry.line, outcome))
                    summary.errors += 1
                else:
                    assert isinstance(entry, _Pair)
                    writer.write(result_row(entry.id, str(entry.path), outcome))
                    summary.done += 1
            bar.update(len(batch))
    return summary
