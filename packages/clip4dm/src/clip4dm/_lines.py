"""The lines of a text input file (a pairs file, a JSON Lines export), decoded one by one.

A line that is not UTF-8 is reported for that line alone (the others are read), a UTF-8 byte-order
mark is ignored, and only ``\\n`` (with an optional ``\\r`` before it) ends a line, so a JSON
string holding U+2028 or a form feed stays on its line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Line", "read_lines"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Line:
    """One non-blank line: its 1-based number and its text, or why it cannot be read."""

    number: int
    text: str | None
    error: str | None = None


def _undecodable(raw: bytes, exc: UnicodeDecodeError) -> str:
    column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
    return f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})"


def read_lines(path: str | os.PathLike[str]) -> Iterator[Line]:
    """Every non-blank line of ``path``, in order (blank lines keep their number), read one at a
    time (a large file is never in memory as a whole).

    Raises ``FileNotFoundError``/``IsADirectoryError``/``OSError`` when the file cannot be read;
    a line that is not UTF-8 comes back with ``text=None`` and an ``error``.
    """
    with Path(path).open("rb") as handle:  # binary lines end at b"\n" only
        for number, line in enumerate(handle, start=1):
            raw = line.removesuffix(b"\n").removesuffix(b"\r")
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Line(number, None, _undecodable(raw, exc))
                continue
            if text.strip():
                yield Line(number, text)
