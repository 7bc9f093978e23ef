"""Pairs files in three formats, read as one stream of records: JSON Lines, CSV/TSV and Parquet.

The format comes from the file's extension: ``.csv`` (comma-separated, a header line naming the
columns), ``.tsv`` (tab-separated, likewise), ``.parquet``/``.pq`` (needs ``clip4dm[parquet]``),
anything else JSON Lines (one object per line). Every record says where it is: ``line`` (the
1-based line number, for JSON Lines and CSV, where it is the line the record starts on) or
``row`` (the 1-based row number, for Parquet); that number is also the record's default id.

Records are read lazily: a Parquet file is read a few thousand rows at a time
(``ParquetFile.iter_batches``), only the columns in use, and a JSON Lines or CSV file line by line.
A bad record (a line that is not UTF-8, or a CSV line with the wrong number of fields) comes back
with an ``error``; a file that cannot be used at all raises `PairsError`, and a column that the
file does not have raises `MissingColumnError` naming the columns it has.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip4dm._lines import read_lines
from vl_core.files import ResultsFileError

__all__ = [
    "Columns",
    "MissingColumnError",
    "PairsError",
    "PairsTable",
    "Record",
    "open_table",
    "table_format",
]

_PARQUET_ROWS = 4096  # rows per Parquet read
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


class PairsError(ResultsFileError):
    """The pairs file as a whole cannot be used (not one bad record: those become error rows)."""


class MissingColumnError(PairsError):
    """The file has no column of this name; ``role`` is ``"image"``, ``"text"`` or ``"id"``."""

    def __init__(self, path: Path, role: str, column: str, available: Sequence[str]) -> None:
        self.role = role
        self.column = column
        self.available = list(available)
        self.what = f"{path.name} has no column {column!r}"
        self.fix = "its columns are " + (", ".join(available) if available else "(none)")
        super().__init__(f"{self.what}: {self.fix}")


@dataclass(frozen=True)
class Columns:
    """The field (JSON Lines) or column (CSV, Parquet) names of the image, the text and the id.

    ``id=None`` takes the ``id`` field or column when there is one, and otherwise numbers the
    records (their line or row number).
    """

    image: str = "image"
    text: str = "text"
    id: str | None = None

    @property
    def id_name(self) -> str:
        """The id field or column looked for."""
        return self.id if self.id is not None else "id"

    def record(self) -> dict[str, str] | None:
        """The names for a run manifest: ``None`` for the defaults (so a run started before
        columns could be named resumes), else every name."""
        if (self.image, self.text, self.id_name) == ("image", "text", "id"):
            return None
        return {"image": self.image, "text": self.text, "id": self.id_name}


@dataclass(frozen=True)
class Record:
    """One record of a pairs file: ``where`` (``"line"`` or ``"row"``) and ``number`` name it;
    ``fields`` are its values by name, or ``None`` with the ``error`` that makes it unreadable.
    ``table`` says whether it comes from a table (CSV, Parquet), where every column is present
    and an absent value is ``None`` (Parquet) or an empty string (CSV)."""

    where: str
    number: int
    fields: Mapping[str, Any] | None
    error: str | None = None
    table: bool = False


def table_format(path: str | os.PathLike[str]) -> str:
    """The format of a pairs file from its extension: ``"csv"``, ``"tsv"``, ``"parquet"`` or
    ``"jsonl"`` (any other extension)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "jsonl"


class PairsTable:
    """A pairs file opened for reading; see `open_table`."""

    def __init__(self, path: Path, kind: str, columns: Columns, names: Sequence[str]) -> None:
        self.path = path
        self.kind = kind
        self.columns = columns
        self.names = list(names)
        """The columns of a CSV or Parquet file (empty for JSON Lines)."""

    @property
    def where(self) -> str:
        """How records are numbered: ``"row"`` (Parquet) or ``"line"``."""
        return "row" if self.kind == "parquet" else "line"

    @property
    def has_id(self) -> bool:
        """Whether ids are read from the file (else records are numbered), for tables."""
        return self.kind == "jsonl" or self.columns.id_name in self.names

    def records(self, *, ids_only: bool = False) -> Iterator[Record]:
        """Every record, in file order. With ``ids_only``, a Parquet file reads its id column
        alone (other formats read everything anyway).

        Raises `PairsError` when the file cannot be read (or stops being readable).
        """
        try:
            if self.kind == "jsonl":
                yield from self._json_records()
            elif self.kind == "parquet":
                yield from self._parquet_records(ids_only)
            else:
                yield from self._csv_records()
        except FileNotFoundError as exc:
            raise PairsError(f"pairs file {str(self.path)!r} not found") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PairsError(f"cannot read pairs file {str(self.path)!r}: {reason}") from exc

    def _json_records(self) -> Iterator[Record]:
        for line in read_lines(self.path):
            if line.text is None:
                yield Record("line", line.number, None, line.error or "unreadable line")
                continue
            try:
                obj = json.loads(line.text)
            except json.JSONDecodeError as exc:
                error = f"invalid JSON: {exc.msg} (column {exc.colno})"
                yield Record("line", line.number, None, error)
                continue
            if not isinstance(obj, dict):
                error = f"expected a JSON object, got {type(obj).__name__}"
                yield Record("line", line.number, None, error)
                continue
            yield Record("line", line.number, obj)

    def _csv_lines(self) -> Iterator[tuple[int, list[str] | None, str | None]]:
        """``(first line, fields, error)`` of each non-blank CSV record, the header included."""
        delimiter = "\t" if self.kind == "tsv" else ","
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield start, None, f"malformed CSV: {exc}"
                    continue
                if not any(field.strip() for field in fields):
                    continue  # a blank line
                bad = next((f for f in fields if _UNDECODABLE.search(f)), None)
                if bad is not None:
                    byte = ord(_UNDECODABLE.findall(bad)[0]) - 0xDC00
                    yield start, None, f"not UTF-8 text (byte 0x{byte:02x})"
                    continue
                yield start, fields, None

    def _csv_records(self) -> Iterator[Record]:
        lines = self._csv_lines()
        next(lines, None)  # the header, checked by open_table
        width = len(self.names)
        for number, fields, error in lines:
            if fields is None:
                yield Record("line", number, None, error)
            elif len(fields) != width:
                error = f"expected {width} fields (the header's), got {len(fields)}"
                yield Record("line", number, None, error)
            else:
                yield Record("line", number, dict(zip(self.names, fields, strict=True)), table=True)

    def _parquet_file(self) -> Any:
        from vl_core.cli import require_extra

        parquet = require_extra(
            "pyarrow.parquet", package="clip4dm", extra="parquet", feature="Parquet pairs files"
        )
        try:
            return parquet.ParquetFile(self.path)
        except (FileNotFoundError, IsADirectoryError):
            raise
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise PairsError(f"cannot read {str(self.path)!r} as Parquet: {exc}") from exc

    def _parquet_records(self, ids_only: bool) -> Iterator[Record]:
        handle = self._parquet_file()
        wanted = [self.columns.id_name] if self.has_id else []
        if not ids_only:
            wanted += [self.columns.image, self.columns.text]
        wanted = list(dict.fromkeys(wanted))
        if not wanted:  # numbered rows, only the ids asked for
            for number in range(1, handle.metadata.num_rows + 1):
                yield Record("row", number, {}, table=True)
            return
        number = 0
        try:
            for batch in handle.iter_batches(batch_size=_PARQUET_ROWS, columns=wanted):
                for values in batch.to_pylist():
                    number += 1
                    yield Record("row", number, values, table=True)
        except (OSError, ValueError) as exc:  # a damaged row group
            raise PairsError(
                f"cannot read {str(self.path)!r} as Parquet after row {number}: {exc}"
            ) from exc


def _check_columns(path: Path, names: Sequence[str], columns: Columns) -> None:
    wanted = [("image", columns.image), ("text", columns.text)]
    if columns.id is not None:
        wanted.append(("id", columns.id))
    for role, name in wanted:
        if name not in names:
            raise MissingColumnError(path, role, name, names)
        if names.count(name) > 1:
            raise PairsError(f"{path.name} has more than one column named {name!r}")


def open_table(path: str | os.PathLike[str], columns: Columns | None = None) -> PairsTable:
    """Open the pairs file ``path`` (format from its extension, see `table_format`), checking
    that a CSV or Parquet file has the columns ``columns`` names (default `Columns()`).

    Returns the `PairsTable`. Raises `PairsError` when the file is missing or unreadable (or
    has no header line), `MissingColumnError` when a column is missing, and
    `vl_core.cli.MissingExtraError` for a Parquet file without pyarrow installed.
    """
    file = Path(path)
    names = columns or Columns()
    kind = table_format(file)
    table = PairsTable(file, kind, names, [])
    if not file.exists():
        raise PairsError(f"pairs file {str(file)!r} not found")
    if file.is_dir():
        raise PairsError(f"pairs file {str(file)!r} is a directory")
    try:
        if kind == "parquet":
            header = list(table._parquet_file().schema_arrow.names)
        elif kind in ("csv", "tsv"):
            first = next(table._csv_lines(), None)
            if first is None:
                raise PairsError(
                    f"{file.name} is empty: a {kind.upper()} pairs file needs a header"
                )
            _, fields, error = first
            if fields is None:
                raise PairsError(f"{file.name}: cannot read the header line ({error})")
            header = fields
        else:
            return table
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PairsError(f"cannot read pairs file {str(file)!r}: {reason}") from exc
    _check_columns(file, header, names)
    return PairsTable(file, kind, names, header)
