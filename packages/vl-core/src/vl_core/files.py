"""Files that survive interruption: atomic replacement and resumable JSON Lines results.

One policy for every command and tool of the three packages:

- **Atomic replacement.** A file is written to a temporary file in the same directory, named
  ``.<name>.<random>.tmp``, flushed and ``fsync``-ed, then renamed over the target (and the
  directory entry is synced where the platform allows). A crash leaves either the old file or the
  new one, never half a file; the temporary file is removed when writing fails.
- **JSON Lines results.** Rows are appended one complete line per write and flushed at once (the
  file is ``fsync``-ed when the writer closes). A reader repairs a torn last line (an interrupted
  run), so a resumed run appends after the last complete row.
- **Resume.** Rows are matched by their ``id``; error rows are taken out to be retried. An existing
  file that is not a results file (a line that is not a JSON object with an ``id``) is never
  rewritten: `ResultsFileError` tells the user to pick another path or pass ``--overwrite``.
- **Run manifests.** ``<out>.run.json`` (or ``run.json`` in an output directory) records the
  fingerprint of the inputs and the settings of the run; a resume over changed inputs or settings
  is refused with a message naming the difference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ExistingRows",
    "JSONFileError",
    "OutputExistsError",
    "ResultsFileError",
    "RowWriter",
    "atomic_output",
    "atomic_rewrite_rows",
    "atomic_save",
    "atomic_write",
    "check_manifest",
    "error_text",
    "file_fingerprint",
    "id_key",
    "read_json",
    "read_results",
    "refuse_input_as_output",
    "write_json",
]

_StrPath = str | os.PathLike[str]


class ResultsFileError(ValueError):
    """A results file or run manifest cannot be read, repaired or resumed."""


class OutputExistsError(ResultsFileError):
    """The output path holds a file this command did not write (pass ``--overwrite``)."""


class JSONFileError(ValueError):
    """A JSON input file that cannot be read or parsed; the message names the file and line.

    Raised by `read_json` with what went wrong: ``reason`` is ``"missing"``, ``"directory"``,
    ``"unreadable"`` (``detail``: the error) or ``"invalid"`` (``detail``: the parser's message, at
    ``line`` and ``column``), so that a caller can word its own message. Raised with a message only
    by callers that check the parsed content (``path`` ``None``, ``reason`` ``""``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        reason: str = "",
        detail: str = "",
        line: int = 0,
        column: int = 0,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.detail = detail
        self.line = line
        self.column = column


def read_json(
    path: _StrPath, what: str = "JSON file", *, error: type[JSONFileError] = JSONFileError
) -> Any:
    """The parsed content of the JSON file ``path`` (a UTF-8 byte-order mark is ignored).

    Raises ``error`` (`JSONFileError` or a subclass) naming the ``what`` and the file (and the line
    and column) when it is missing, unreadable, not UTF-8 or not JSON.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(
            f"{what} not found ({target}): check the path", path=target, reason="missing"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = "directory" if isinstance(exc, IsADirectoryError) else "unreadable"
        raise error(
            f"cannot read the {what} ({target}): {exc}", path=target, reason=reason, detail=str(exc)
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"the {what} is not valid JSON ({target}, line {exc.lineno} column {exc.colno}): "
            f"{exc.msg}",
            path=target,
            reason="invalid",
            detail=exc.msg,
            line=exc.lineno,
            column=exc.colno,
        ) from exc


# -- atomic replacement ---------------------------------------------------------------------------


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_beside(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    return Path(name)


def atomic_save(path: _StrPath, save: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically with ``save(temporary_path)`` (e.g. ``torch.save``, safetensors).

    Returns the target path. Raises whatever ``save`` raises (the temporary file is removed) or
    ``OSError`` when the file cannot be synced or renamed.
    """
    target = Path(path)
    temporary = _temporary_beside(target)
    try:
        save(temporary)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(target.parent)
    return target


@contextlib.contextmanager
def atomic_output(path: _StrPath, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """A handle to write ``path`` atomically: the target is replaced only when the block ends
    without an exception. ``mode`` is ``"w"`` (text, ``\\n`` line ends) or ``"wb"``.

    Raises ``ValueError`` for another mode, ``OSError`` when the file cannot be written.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes with mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    temporary = _temporary_beside(target)
    try:
        if mode == "w":
            handle: IO[Any] = temporary.open("w", encoding=encoding, newline="\n")
        else:
            handle = temporary.open("wb")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(target.parent)


def atomic_write(path: _StrPath, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Replace ``path`` by ``data`` atomically; returns the path. Raises ``OSError``."""
    with atomic_output(path, "wb") as handle:
        handle.write(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def write_json(path: _StrPath, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as UTF-8 JSON (non-ASCII kept, final newline) atomically; returns the path.

    Raises ``TypeError`` for data JSON cannot hold, ``OSError`` when the file cannot be written.
    """
    return atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def atomic_rewrite_rows(path: _StrPath, rows: Iterable[str]) -> Path:
    """Replace ``path`` by ``rows`` (JSON texts, one per line) atomically; returns the path."""
    with atomic_output(path, "w") as handle:
        handle.writelines(row + "\n" for row in rows)
    return Path(path)


# -- JSON Lines results ---------------------------------------------------------------------------


def id_key(value: object) -> str:
    """A hashable key for a row id under which ``1`` and ``"1"`` stay distinct."""
    return json.dumps(value)


def error_text(exc: BaseException) -> str:
    """The exception's message, or its type name when the message is empty."""
    message = str(exc)
    return message if message else type(exc).__name__


@dataclass
class ExistingRows:
    """What a resumed run finds in its output file."""

    done: set[str] = field(default_factory=set)
    """`id_key` of every good row."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The good rows, in file order."""
    retried: int = 0
    """Error rows taken out of the file, to be computed again."""
    repaired: list[str] = field(default_factory=list)
    """What was repaired (``"line 7: truncated last line (interrupted run)"``)."""


def read_results(path: _StrPath, *, repair: bool = True, retry_errors: bool = True) -> ExistingRows:
    """Read a JSON Lines results file written by `RowWriter`, for a resumed run.

    A torn last line (an interrupted write) is dropped; with ``retry_errors`` the rows that carry
    an ``error`` field are dropped too, so that they are computed again. With ``repair`` the file
    is rewritten atomically without what was dropped. A missing file reads as empty.

    Raises `OutputExistsError` when the file is not a results file (a complete line that is not a
    JSON object with an ``id``: a file the command did not write, never rewritten), and
    `ResultsFileError` when it cannot be read.
    """
    target = Path(path)
    found = ExistingRows()
    if not target.exists():
        return found
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"cannot read output file {str(target)!r}: {exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    clean_end = data.endswith(b"\n") or not data
    kept: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines) and not clean_end
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not isinstance(row, dict) or "id" not in row:
            if last and row is None:
                found.repaired.append(f"line {number}: truncated last line (interrupted run)")
                continue
            raise OutputExistsError(
                f"{str(target)!r} is not a results file of this command (line {number} is not a "
                "result row): choose another output, or pass --overwrite to replace it"
            )
        if retry_errors and "error" in row:
            found.retried += 1
            continue
        kept.append(json.dumps(row, ensure_ascii=False))
        found.rows.append(row)
        found.done.add(id_key(row["id"]))
    if repair and (found.repaired or found.retried or not clean_end):
        atomic_rewrite_rows(target, kept)
    return found


class RowWriter:
    """Appends JSON rows to a results file, one complete line per write, flushed at once.

    The file is created at the first row, so a run that fails before producing anything leaves no
    empty output. ``close()`` (or leaving the ``with`` block) syncs the file to disk.
    """

    def __init__(self, path: _StrPath) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None
        self.count = 0

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` as one line. Raises ``TypeError`` for data JSON cannot hold."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab", buffering=0)
        view = memoryview(line)
        while view:  # an unbuffered write may be partial: finish the line before anything else
            view = view[self._handle.write(view) :]
        self.count += 1

    def close(self) -> None:
        """Sync and close the file (no-op when nothing was written)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- inputs and outputs ---------------------------------------------------------------------------


def file_fingerprint(path: _StrPath) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, to notice a changed input on resume.

    Raises ``OSError`` when the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def refuse_input_as_output(outputs: Iterable[_StrPath], inputs: Iterable[_StrPath]) -> None:
    """Raise `OutputExistsError` when one of ``outputs`` is one of ``inputs`` (same file)."""
    resolved = {}
    for item in inputs:
        with contextlib.suppress(OSError):
            resolved[Path(item).resolve()] = str(item)
    for out in outputs:
        target = Path(out).resolve()
        if target in resolved:
            raise OutputExistsError(
                f"the output {str(out)!r} is the input {resolved[target]!r}: a command never "
                "writes over its inputs; choose another output path"
            )


def check_manifest(
    path: _StrPath, record: Mapping[str, Any], *, overwrite: bool = False
) -> dict[str, Any] | None:
    """Check a resumed run against its manifest, or write the manifest of a new run.

    ``record`` maps names (input fingerprints, settings) to JSON values. When ``path`` exists and
    differs from ``record``, raises `ResultsFileError` naming each difference (unless
    ``overwrite``, which replaces it). Returns the previous manifest, or ``None`` for a new run.
    """
    target = Path(path)
    wanted = json.loads(json.dumps(dict(record), ensure_ascii=False))
    previous: dict[str, Any] | None = None
    if target.exists():
        try:
            loaded = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResultsFileError(
                f"run manifest {str(target)!r} is unreadable ({exc}): delete it, or pass "
                "--overwrite to start over"
            ) from exc
        if not isinstance(loaded, dict):
            raise ResultsFileError(f"run manifest {str(target)!r} is not a JSON object")
        previous = loaded
        changed = _differences(previous, wanted)
        if changed and not overwrite:
            raise ResultsFileError(
                f"the output was made from other inputs or settings ({'; '.join(changed)}; see "
                f"{target.name}): use another output, or pass --overwrite to start over"
            )
        if not changed:
            return previous
    write_json(target, wanted)
    return previous


def _differences(previous: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    notes = []
    for key in sorted(set(previous) | set(wanted)):
        if previous.get(key) != wanted.get(key):
            notes.append(f"{key}: {_short(previous.get(key))} -> {_short(wanted.get(key))}")
    return notes


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
