"""Result files as JSON Lines that survive interruption: one complete row per write, and a
reader that repairs a torn last line. Shared by ``clip4dm detect --pairs`` and ``clip4dm eval``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ResultsFileError",
    "RowWriter",
    "atomic_rewrite",
    "error_text",
    "id_key",
    "load_existing",
]


class ResultsFileError(ValueError):
    """A results file cannot be read or repaired."""


def id_key(value: object) -> str:
    """A hashable key under which ``1`` and ``"1"`` stay distinct ids."""
    return json.dumps(value)


def load_existing(out_path: Path) -> tuple[set[str], int, list[str]]:
    """Ids already scored in ``out_path``; rewrites the file without torn, invalid or error rows.

    Returns the done ids, the number of error rows taken out (to retry), and a description of
    each unusable line dropped.
    """
    if not out_path.exists():
        return set(), 0, []
    try:
        data = out_path.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"cannot read output file {str(out_path)!r}: {exc}") from exc
    kept: list[str] = []
    done: set[str] = set()
    dropped: list[str] = []
    retried = 0
    lines = data.split(b"\n")
    clean_end = data.endswith(b"\n") or not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            torn = number == len(lines) and not clean_end
            what = "truncated last line (interrupted run)" if torn else "invalid JSON"
            dropped.append(f"line {number}: {what}")
            continue
        if not isinstance(row, dict) or "id" not in row:
            dropped.append(f"line {number}: not a result row")
            continue
        if "error" in row:
            retried += 1
            continue
        kept.append(json.dumps(row, ensure_ascii=False))
        done.add(id_key(row["id"]))
    if dropped or retried or not clean_end:
        atomic_rewrite(out_path, kept)
    return done, retried, dropped


def atomic_rewrite(path: Path, rows: Sequence[str]) -> None:
    """Replace ``path`` by ``rows`` (one per line) through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(row + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RowWriter:
    """Appends rows to the output, each as one complete line in one write, flushed at once.

    The file is opened (created) at the first row, so a run that fails before producing any
    row leaves no empty output behind.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: IO[bytes] | None = None

    def write(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self._path.open("ab", buffering=0)
        view = memoryview((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        while view:  # an unbuffered write may be partial; finish the line before anything else
            view = view[self._handle.write(view) :]
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def error_text(exc: BaseException) -> str:
    """The exception's message, or its type name when the message is empty."""
    message = str(exc)
    return message if message else type(exc).__name__
