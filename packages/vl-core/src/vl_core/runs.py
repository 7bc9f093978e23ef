"""Resumable sharded row runs: one JSON row per input, spread over ``torchrun`` ranks.

A command that turns an ordered list of inputs (each with a unique JSON id) into one results row
each (``egtr eval``'s predictions cache, ``egtr predict``, ``clip4dm detect --pairs``) runs through
`ShardedRun`:

1. `ShardedRun.start` (every rank; rank 0 does the file work while the others wait): refuses an
   output that is not a results file (unless ``overwrite``), checks the run manifest when one is
   given (`vl_core.files.check_manifest`), then folds what an earlier run left (the final file and
   the part files of *any* rank: the earlier run may have had another world size) into the final
   file, in input order. Torn last lines are dropped, error rows are taken out to be retried.
2. Each rank computes `ShardedRun.blocks` (its share of the inputs still without a row) and
   appends one row per input to `ShardedRun.part` with `ShardedRun.writing` (a
   `vl_core.files.RowWriter`). A single process writes to the final file itself; under
   ``torchrun`` rank ``r`` writes the hidden ``.<name>.part-<r>`` beside it.
3. `ShardedRun.finish` (every rank): once all ranks are done, rank 0 merges the final file and
   every part file into the final file in input order (atomically), then removes the parts.

Inputs are split into blocks of ``block_size`` consecutive positions and the blocks are dealt out
round-robin over the ranks (`vl_core.distributed.Dist.shard`), so which rank computes an input
depends only on the input order, never on what an earlier run finished. A block is the unit a
command computes together (a padded batch whose outputs depend on its members): a block with some
rows missing is computed whole again and only the missing rows are written, so a resumed run
writes the same rows as one that was never interrupted. The final file of a run that was killed
at any point (``kill -9`` included) and resumed, with any number of processes, is byte for byte
the final file of an uninterrupted single-process run (the rows being deterministic).

Multi-node runs work the same way provided the output folder is on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vl_core.distributed import Dist, DistributedError
from vl_core.files import (
    ResultsFileError,
    RowWriter,
    atomic_rewrite_rows,
    check_manifest,
    error_text,
    id_key,
    read_results,
)

__all__ = ["Block", "Finished", "Resumed", "ShardedRun", "leftover_parts", "part_path"]

_PART = ".part-"


def part_path(out: str | Path, rank: int) -> Path:
    """Where rank ``rank`` of a sharded run writes its rows: ``.<name>.part-<rank>`` beside
    ``out``."""
    target = Path(out)
    return target.with_name(f".{target.name}{_PART}{rank}")


def leftover_parts(out: str | Path) -> list[Path]:
    """The part files of ``out`` that exist now (of any rank), by rank."""
    target = Path(out)
    prefix = f".{target.name}{_PART}"
    if not target.parent.is_dir():
        return []
    found = []
    for path in target.parent.iterdir():
        suffix = path.name[len(prefix) :]
        if path.name.startswith(prefix) and suffix.isdigit() and path.is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class Block:
    """Consecutive inputs computed together: ``positions`` (the whole block, indices into the
    run's ids) and ``todo`` (those still without a row, whose rows are to be written)."""

    positions: range
    todo: tuple[int, ...]


@dataclass(frozen=True)
class Resumed:
    """What `ShardedRun.start` found of an earlier run (the same on every rank)."""

    done: int
    """Inputs that already have a good row (skipped)."""
    retried: int
    """Error rows of the earlier run, taken out to be computed again."""
    repaired: tuple[str, ...] = ()
    """What was repaired (``"predictions.jsonl line 7: truncated last line (interrupted run)"``)."""
    parts: int = 0
    """Part files of an interrupted sharded run folded into the final file."""


@dataclass(frozen=True)
class Finished:
    """What `ShardedRun.finish` leaves: the final file's rows on rank 0 and the run's counts."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """Rank 0: the final file's rows, in input order (then rows of ids that are not inputs, in
    file order); empty on the other ranks."""
    written: int = 0
    """Rows written by this run, over all ranks."""
    errors: int = 0
    """Error rows (rows with an ``error`` field) in the final file."""
    missing: int = 0
    """Inputs without a row in the final file (0 after a complete run)."""


class ShardedRun:
    """A resumable run writing one JSON row per input id to ``out``, sharded over ranks.

    ``ids``: the inputs' ids (JSON values, unique), in input order; ``dist``: this process's place
    in the run (`vl_core.distributed.from_environment`; default one process); ``block_size``: the
    inputs computed together (see the module docstring); ``manifest``/``record``: the run
    manifest `ShardedRun.start` checks (`vl_core.files.check_manifest`), none when ``manifest``
    is ``None``; ``overwrite``: start over (the final file, its parts and the manifest are
    replaced).

    Raises ``ValueError`` for a ``block_size`` below 1 or an id that appears twice.
    """

    def __init__(
        self,
        out: str | Path,
        ids: Sequence[Any],
        dist: Dist | None = None,
        *,
        block_size: int = 1,
        manifest: str | Path | None = None,
        record: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.out = Path(out)
        self.ids = list(ids)
        self.dist = dist if dist is not None else Dist()
        self.block_size = block_size
        self.manifest = Path(manifest) if manifest is not None else None
        self.record = dict(record or {})
        self.overwrite = overwrite
        self._keys = [id_key(value) for value in self.ids]
        self._position: dict[str, int] = {}
        for position, key in enumerate(self._keys):
            if key in self._position:
                raise ValueError(
                    f"input id {key} appears twice (positions {self._position[key]} and "
                    f"{position}): ids must be unique"
                )
            self._position[key] = position
        self.blocks: list[Block] = []
        """This rank's blocks with rows still to write, in input order (set by `start`)."""
        self._started = False
        self._writer: RowWriter | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def part(self) -> Path:
        """The file this rank appends its rows to: the final file in a single process, its part
        file (`part_path`) under ``torchrun``."""
        return part_path(self.out, self.dist.rank) if self.dist.sharded else self.out

    @property
    def todo(self) -> list[int]:
        """The positions (indices into ``ids``) whose rows this rank still writes, in order."""
        return [position for block in self.blocks for position in block.todo]

    # -- the run -------------------------------------------------------------------------------

    def start(self) -> Resumed:
        """Prepare the output and find this rank's share; every rank calls it (collective).

        Returns what was found of an earlier run. Raises `vl_core.files.OutputExistsError` when
        ``out`` is not a results file (unless ``overwrite``) and `vl_core.files.ResultsFileError`
        when the manifest records other inputs or settings (the message names the differences) or
        a file cannot be read; on the ranks other than 0, ``ResultsFileError`` with rank 0's
        message.
        """
        done_keys, resumed = self.dist.run_on_main(self._prepare, error=ResultsFileError)
        done = set(done_keys)
        count = len(self.ids)
        size = self.block_size
        self.blocks = []
        for block in self.dist.shard(math.ceil(count / size)):
            positions = range(block * size, min(count, (block + 1) * size))
            todo = tuple(p for p in positions if self._keys[p] not in done)
            if todo:
                self.blocks.append(Block(positions, todo))
        self._started = True
        return resumed

    def _prepare(self) -> tuple[list[str], Resumed]:
        """Rank 0: check the output and the manifest, fold leftovers into the final file."""
        parts = leftover_parts(self.out)
        if not self.overwrite:
            read_results(self.out, repair=False, retry_errors=False)  # a foreign file is refused
        if self.manifest is not None:
            # Without rows yet, a manifest left by a run that failed early describes nothing.
            fresh = self.overwrite or not (self.out.exists() or parts)
            check_manifest(self.manifest, self.record, overwrite=fresh)
        if self.overwrite:
            self.out.unlink(missing_ok=True)
            for path in parts:
                path.unlink()
            parts = []
        found = read_results(self.out)  # repairs a torn last line, takes error rows out
        retried = found.retried
        repaired = [f"{self.out.name} {note}" for note in found.repaired]
        rows = {id_key(row["id"]): row for row in found.rows}
        for path in parts:
            leftover = read_results(path, repair=False)
            retried += leftover.retried
            repaired += [f"{path.name} {note}" for note in leftover.repaired]
            for row in leftover.rows:
                rows.setdefault(id_key(row["id"]), row)
        if parts:
            self._rewrite(self._ordered(rows))
            for path in parts:
                path.unlink()
        resumed = Resumed(
            done=sum(1 for key in rows if key in self._position),
            retried=retried,
            repaired=tuple(repaired),
            parts=len(parts),
        )
        return list(rows), resumed

    def writer(self) -> RowWriter:
        """A `vl_core.files.RowWriter` appending to `part` (the same one on every call).

        Raises ``RuntimeError`` before `start`.
        """
        if not self._started:
            raise RuntimeError("ShardedRun.start() must be called before writing rows")
        if self._writer is None:
            self._writer = RowWriter(self.part)
        return self._writer

    @contextlib.contextmanager
    def writing(self) -> Iterator[RowWriter]:
        """`writer` for the ``with`` block, closed (synced) at its end.

        When the block raises an ``Exception``, the other ranks are told (their `finish` raises
        `vl_core.distributed.DistributedError` naming this rank's error) before it propagates; a
        ``KeyboardInterrupt`` propagates at once (``torchrun`` interrupts every rank). Call
        `finish` after a block that ended normally.
        """
        writer = self.writer()
        try:
            yield writer
        except Exception as exc:
            writer.close()
            if self.dist.sharded:
                self._report(f"rank {self.dist.rank}: {error_text(exc)}", writer.count)
            raise
        finally:
            writer.close()

    def _report(self, failure: str | None, written: int) -> list[tuple[str | None, int]]:
        return self.dist.all_gather((failure, written))

    def finish(self) -> Finished:
        """Merge every rank's rows into the final file, in input order; every rank calls it
        (collective), after its rows are written.

        Returns the final rows (rank 0) and the counts. Raises
        `vl_core.distributed.DistributedError` when another rank failed (its part file is kept,
        for a resumed run), ``ResultsFileError`` when a file cannot be read, ``OSError`` when the
        final file cannot be written.
        """
        if not self._started:
            raise RuntimeError("ShardedRun.start() must be called before finish()")
        written = self._writer.count if self._writer is not None else 0
        if self._writer is not None:
            self._writer.close()
        reports = self._report(None, written)
        failures = [failure for failure, _ in reports if failure]
        if failures:
            raise DistributedError(failures[0])
        merged: list[list[dict[str, Any]]] = []

        def merge() -> tuple[int, int]:  # the rows stay on rank 0; the others get the counts
            rows = self._merge()
            merged.append(rows)
            return sum(1 for row in rows if "error" in row), self._missing(rows)

        errors, missing = self.dist.run_on_main(merge, error=ResultsFileError)
        return Finished(
            rows=merged[0] if merged and self.dist.is_main else [],
            written=sum(count for _, count in reports),
            errors=errors,
            missing=missing,
        )

    def _merge(self) -> list[dict[str, Any]]:
        """Rank 0: the final file and the parts, merged in input order into the final file."""
        found = read_results(self.out, repair=False, retry_errors=False)
        parts = leftover_parts(self.out)
        chosen = {id_key(row["id"]): row for row in found.rows}
        in_order = list(chosen)
        for path in parts:
            for row in read_results(path, repair=False, retry_errors=False).rows:
                chosen.setdefault(id_key(row["id"]), row)  # a row of each id (all alike)
        ordered = self._ordered(chosen)
        if parts or [id_key(row["id"]) for row in ordered] != in_order:
            self._rewrite(ordered)
        for path in parts:
            path.unlink()
        return ordered

    def _missing(self, rows: Sequence[Mapping[str, Any]]) -> int:
        have = {id_key(row["id"]) for row in rows}
        return sum(1 for key in self._keys if key not in have)

    def _ordered(self, rows: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` (by id key) in input order, then those of ids that are not inputs."""
        mine = [rows[key] for key in self._keys if key in rows]
        others = [row for key, row in rows.items() if key not in self._position]
        return mine + others

    def _rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        atomic_rewrite_rows(self.out, [json.dumps(row, ensure_ascii=False) for row in rows])
