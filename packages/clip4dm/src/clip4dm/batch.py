"""Batch detection: the runner shared by ``detect --pairs`` and ``eval``, and resumable pairs files.

`BatchRunner` scores a batch of items with one detector: it loads the images (each file once per
batch, so the detector encodes it once), turns an image that cannot be loaded into an error for
that item alone, scores the rest in one call, and scores them one by one if that call fails, so
one bad input never costs the others.

`run_pairs` applies it to a pairs file: JSON Lines, one ``{"id": ..., "image": "path", "text":
"caption"}`` per line, or a CSV/TSV or Parquet table with such columns (`clip4dm._tables`; the
field or column names can be chosen with `Columns`). ``id`` is optional: the record's line
number (its row number in Parquet); a relative ``image`` is resolved against ``images_root`` or
else the pairs file's directory. Rows (`clip4dm.rows`) are appended one complete line at a time
and flushed, so an interrupted run loses at most the line being written; a rerun repairs that
line, keeps the finished rows, retries the error rows and computes the rest. ``<out>.run.json``
records the pairs file's fingerprint and the settings: a rerun over a changed pairs file or with
other settings is refused unless ``overwrite``, which starts over. Under ``torchrun`` the pairs
are shared out among the processes (`vl_core.runs.ShardedRun`) and the output is the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from clip4dm._tables import (
    Columns,
    MissingColumnError,
    PairsError,
    PairsTable,
    Record,
    open_table,
)
from clip4dm.rows import DetectionLike, pair_error_row, result_row
from vl_core.files import error_text, file_fingerprint, id_key, refuse_input_as_output

if TYPE_CHECKING:
    from PIL import Image

    from vl_core.images import ImageSource
    from vl_core.runs import Block, ShardedRun

__all__ = [
    "BatchRunner",
    "BatchSummary",
    "Columns",
    "DetectionLike",
    "DetectorLike",
    "ImageRef",
    "Item",
    "MissingColumnError",
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

    def score(
        self, items: Sequence[Item], *, needed: Sequence[bool] | None = None
    ) -> list[DetectionLike | str]:
        """One result per item, in order: its detection, or the text of the error that stands
        for it (an image that cannot be loaded, or a pair the detector fails on).

        ``needed`` (one flag per item) marks the items whose results are wanted; the others are
        the rest of their batch, scored with them so that the wanted ones come out as in a run
        that scored the whole batch. When no wanted item has an image that loads, nothing is
        scored (the detector is not loaded) and the other items come back as ``"not scored"``.

        Raises ``ValueError`` when ``needed`` has another length than ``items``, and otherwise
        only what loading the detector raises (and ``KeyboardInterrupt``).
        """
        wanted = [True] * len(items) if needed is None else list(needed)
        if len(wanted) != len(items):
            raise ValueError(f"needed has {len(wanted)} flags for {len(items)} items")
        out: list[DetectionLike | str] = ["not scored" for _ in items]
        images: dict[int, Image.Image] = {}
        cache: dict[str, Image.Image] = {}  # items sharing an image file share one loaded image
        for pass_wanted in (True, False):  # the others only when some wanted item loads
            if not pass_wanted and not images:
                return out
            for position, item in enumerate(items):
                if wanted[position] is not pass_wanted:
                    continue
                try:
                    images[position] = _load(item.image, cache)
                except Exception as exc:  # unreadable image, or a dataset that fails to decode it
                    out[position] = error_text(exc)
        if not images:
            return out
        detector = self.detector()
        for with_references in (False, True):
            group = [
                i for i in sorted(images) if (items[i].references is not None) is with_references
            ]
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


@dataclass
class BatchSummary:
    """Counts of one run: rows computed now, pairs already in the output, error rows written;
    error rows of earlier runs taken out to retry, and what was repaired in the output (the torn
    last line of an interrupted run). Under ``torchrun`` the counts are those of all processes."""

    done: int = 0
    skipped: int = 0
    errors: int = 0
    retried: int = 0
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.done} done, {self.skipped} skipped, {self.errors} errors"


@dataclass(frozen=True)
class _Pair:
    where: str
    number: int
    id: PairId
    image: str
    path: Path
    text: str


@dataclass(frozen=True)
class _BadLine:
    where: str
    number: int
    id: PairId
    error: str


def _record_id(record: Record, columns: Columns) -> tuple[PairId, str | None]:
    """The id of ``record`` and ``None``; or, when it has no usable one, its number and why not
    (``None`` when it simply has no id: it is then numbered)."""
    name = columns.id_name
    if record.fields is None or name not in record.fields:
        return record.number, None
    value = record.fields[name]
    if record.table and (value is None or value == ""):
        return record.number, f"no value in column {name!r}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return record.number, f"{name!r} must be a string or an integer, got {value!r}"
    return value, None


def _entry(record: Record, columns: Columns, root: Path) -> _Pair | _BadLine:
    """One record as a pair to score, or the reason it cannot be one."""
    pair_id, problem = _record_id(record, columns)
    where, number, fields = record.where, record.number, record.fields
    if fields is None or problem is not None:
        return _BadLine(where, number, pair_id, problem or record.error or "unreadable record")
    missing = [name for name in (columns.image, columns.text) if name not in fields]
    if missing:
        return _BadLine(where, number, pair_id, f"missing field(s): {', '.join(missing)}")
    empty = [name for name in (columns.image, columns.text) if fields[name] is None]
    if record.table and empty:
        return _BadLine(where, number, pair_id, f"no value in column(s): {', '.join(empty)}")
    image, text = fields[columns.image], fields[columns.text]
    if not isinstance(image, str) or not image.strip():
        return _BadLine(
            where, number, pair_id, f"{columns.image!r} must be a non-empty path string"
        )
    if not isinstance(text, str):
        error = f"{columns.text!r} must be a string, got {type(text).__name__}"
        return _BadLine(where, number, pair_id, error)
    if not text.strip():
        return _BadLine(where, number, pair_id, f"{columns.text!r} is empty or whitespace-only")
    path = Path(image).expanduser()
    if not path.is_absolute():
        path = root / path
    return _Pair(where, number, pair_id, image, path, text)


def _read_ids(table: PairsTable) -> list[PairId]:
    """The id of every record, in file order (a first pass over the file, which reads a Parquet
    file's id column alone). Raises `PairsError` when an id appears twice."""
    ids: list[PairId] = []
    first: dict[str, tuple[int, bool]] = {}
    duplicates: list[str] = []
    numbered = False  # whether a duplicate is a record numbered for want of an id
    for record in table.records(ids_only=True):
        pair_id, problem = _record_id(record, table.columns)
        fields = record.fields
        by_number = problem is not None or fields is None or table.columns.id_name not in fields
        key = id_key(pair_id)
        if key in first:
            number, was_numbered = first[key]
            duplicates.append(f"{pair_id!r} ({table.where}s {number} and {record.number})")
            numbered = numbered or was_numbered or by_number
        else:
            first[key] = (record.number, by_number)
        ids.append(pair_id)
    if duplicates:
        more = f" and {len(duplicates) - 3} more" if len(duplicates) > 3 else ""
        hint = (
            f"; a {table.where} without an id is numbered by its {table.where}" if numbered else ""
        )
        raise PairsError(
            f"{table.path.name} has duplicate ids: {', '.join(duplicates[:3])}{more}: every id "
            f"must be unique{hint}"
        )
    return ids


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
    columns: Columns | None = None,
) -> BatchSummary:
    """Score every pair of ``pairs_path`` not yet in ``out_path``, writing one row per pair.

    ``pairs_path`` is JSON Lines, CSV/TSV or Parquet (from its extension, see
    `clip4dm._tables`); ``columns`` names its image, text and id fields or columns (default
    ``image``, ``text`` and ``id`` when present, else the line or row number). ``detector`` may
    be a zero-argument factory (see `BatchRunner`). ``settings`` (JSON values: model, mode,
    epsilon, ...) are recorded with the pairs file's fingerprint in `manifest_path`; resuming
    with a changed pairs file or other settings is refused. With ``overwrite`` the output is
    started over (also when it is not a results file).

    Under ``torchrun`` every process calls it: the pairs are shared out by batches of
    ``batch_size`` (`vl_core.runs.ShardedRun`), each process writes its own part file, and rank
    0 merges them into ``out_path`` in input order, so the output equals that of one process,
    also when a run is resumed with another number of processes. The rows are always in input
    order.

    Returns the run's `BatchSummary`. Raises ``ValueError`` for a ``batch_size`` below 1,
    `PairsError` when the pairs file cannot be read or has duplicate ids (`MissingColumnError`
    when it lacks a named column), `vl_core.cli.MissingExtraError` for Parquet without pyarrow,
    `vl_core.files.OutputExistsError` when the output is an input or a file this command did not
    write, `vl_core.files.ResultsFileError` when the output was made from other inputs or
    settings, and `vl_core.distributed.DistributedError` when another process failed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs_file, out_file = Path(pairs_path), Path(out_path)
    manifest = manifest_path(out_file)
    refuse_input_as_output([out_file, manifest], [pairs_file])
    table = open_table(pairs_file, columns)
    root = Path(images_root).expanduser() if images_root is not None else pairs_file.parent

    from vl_core.distributed import process_group
    from vl_core.runs import ShardedRun

    with process_group("gloo") as dist:
        ids = _read_ids(table)
        record: dict[str, Any] = {}
        if dist.is_main:  # only rank 0 checks the manifest
            record = {
                "command": "clip4dm detect --pairs",
                "pairs": file_fingerprint(pairs_file),
                "images_root": None if images_root is None else str(root.resolve()),
            }
            if table.columns.record() is not None:
                record["columns"] = table.columns.record()
            record.update(settings or {})
        run = ShardedRun(
            out_file,
            ids,
            dist,
            block_size=batch_size,
            manifest=manifest,
            record=record,
            overwrite=overwrite,
        )
        resumed = run.start()
        summary = BatchSummary(
            skipped=resumed.done,
            retried=resumed.retried,
            dropped=[note.removeprefix(f"{out_file.name} ") for note in resumed.repaired],
        )
        todo = len(run.todo)
        with (
            run.writing() as writer,
            tqdm(
                total=todo,
                desc="clip4dm",
                unit="pair",
                disable=not (progress and dist.is_main and todo),
            ) as bar,
        ):

            @contextlib.contextmanager
            def aside() -> Iterator[None]:  # the model loads without counting in the pair rate
                bar.clear()
                yield
                bar.unpause()

            runner = BatchRunner(detector, pause=aside)
            for block, entries in _blocks(table, root, run):
                for row in _score_block(runner, block, entries):
                    writer.write(row)
                bar.update(len(block.todo))
        finished = run.finish()
    summary.errors = finished.errors
    summary.done = finished.written - finished.errors
    return summary


def _blocks(
    table: PairsTable, root: Path, run: ShardedRun
) -> Iterator[tuple[Block, list[_Pair | _BadLine]]]:
    """This rank's blocks with their entries, read from the file in one pass (a second one: the
    ids were read first). Raises `PairsError` when the file changed since its ids were read."""
    records = enumerate(table.records())
    for block in run.blocks:
        entries: list[_Pair | _BadLine] = []
        for position, record in records:
            if position < block.positions.start:
                continue
            entry = _entry(record, table.columns, root)
            if id_key(entry.id) != id_key(run.ids[position]):
                break
            entries.append(entry)
            if position + 1 == block.positions.stop:
                break
        if len(entries) != len(block.positions):
            raise PairsError(f"{table.path.name} changed during the run: rerun the command")
        yield block, entries


def _score_block(
    runner: BatchRunner, block: Block, entries: Sequence[_Pair | _BadLine]
) -> list[dict[str, Any]]:
    """The rows of the block's positions still to write. The block's pairs are scored together
    (those already written too, when a pair still to write has an image), so a resumed run
    writes the rows a run that was never interrupted writes."""
    todo = set(block.todo)
    pairs = [
        (position, entry)
        for position, entry in zip(block.positions, entries, strict=True)
        if isinstance(entry, _Pair)
    ]
    outcomes = runner.score(
        [Item(entry.path, entry.text) for _, entry in pairs],
        needed=[position in todo for position, _ in pairs],
    )
    found = {position: outcome for (position, _), outcome in zip(pairs, outcomes, strict=True)}
    rows: list[dict[str, Any]] = []
    for position, entry in zip(block.positions, entries, strict=True):
        if position not in todo:
            continue
        outcome = entry.error if isinstance(entry, _BadLine) else found[position]
        if isinstance(outcome, str):
            rows.append(pair_error_row(entry.id, entry.number, outcome, where=entry.where))
        else:
            assert isinstance(entry, _Pair)
            rows.append(result_row(entry.id, str(entry.path), outcome))
    return rows
