"""Reading benchmark files: whole-file errors name the file, field errors become `BadRecord`s."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clip4dm._lines import read_lines
from clip4dm.eval.errors import DataError
from clip4dm.eval.samples import BadRecord, Record
from vl_core import files


class RecordError(ValueError):
    """One record is malformed; the message says why (the loader adds which file and record)."""


def read_json(path: Path) -> Any:
    """The JSON document in ``path`` (a UTF-8 byte-order mark is ignored).

    Raises `DataError` naming the file for any failure (missing, unreadable, not JSON).
    """
    try:
        return files.read_json(path, "data file")
    except files.JSONFileError as exc:
        raise DataError(_data_file_message(path, exc)) from exc


def _data_file_message(path: Path, exc: files.JSONFileError) -> str:
    """The `DataError` message for a JSON data file that `vl_core.files.read_json` refused."""
    if exc.reason == "missing":
        return f"data file {str(path)!r} not found"
    if exc.reason == "directory":
        return f"data path {str(path)!r} is a directory, expected a JSON file"
    if exc.reason == "invalid":
        return f"{path.name}: not valid JSON ({exc.detail} at line {exc.line}, column {exc.column})"
    return f"cannot read data file {str(path)!r}: {exc.detail}"


def read_jsonl(path: Path) -> Iterator[tuple[int, Any | RecordError]]:
    """``(line number, object)`` for each non-blank line; a line that is not JSON (or not UTF-8)
    yields a `RecordError`. A UTF-8 byte-order mark is ignored.

    Raises `DataError` when the file as a whole cannot be read.
    """
    try:
        lines = list(read_lines(path))
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataError(f"data path {str(path)!r} is a directory, expected a .jsonl file") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc.strerror}") from exc
    for line in lines:
        if line.text is None:
            yield line.number, RecordError(line.error or "unreadable line")
            continue
        try:
            yield line.number, json.loads(line.text)
        except json.JSONDecodeError as exc:
            yield line.number, RecordError(f"invalid JSON ({exc.msg}, column {exc.colno})")


def as_object(value: Any) -> Mapping[str, Any]:
    """``value`` as a JSON object, or a `RecordError`."""
    if not isinstance(value, Mapping):
        raise RecordError(f"expected a JSON object, got {type(value).__name__}")
    return value


def get_field(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]``, or a `RecordError` naming the missing field."""
    if key not in obj:
        raise RecordError(f"missing field {key!r}")
    return obj[key]


def get_str(obj: Mapping[str, Any], key: str, *, nonempty: bool = True) -> str:
    """A string field (non-blank unless ``nonempty=False``)."""
    value = get_field(obj, key)
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise RecordError(f"{key!r} is empty")
    return value


def get_str_list(obj: Mapping[str, Any], key: str, *, required: bool = True) -> list[str]:
    """A list-of-strings field (``[]`` when absent and not ``required``)."""
    if key not in obj and not required:
        return []
    value = get_field(obj, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"{key!r} must be a list of strings")
    return value


def get_id(obj: Mapping[str, Any], key: str) -> str:
    """An id field (string or integer) as a string."""
    value = get_field(obj, key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"{key!r} must be a string or an integer, got {value!r}")
    return str(value)


def parse_records(
    items: list[Any],
    where: Callable[[int], str],
    fallback_ids: Callable[[int], list[str]],
    parse: Callable[[int, Any, str], list[Record]],
) -> list[Record]:
    """Run ``parse(index, item, where)`` on each item; on a `RecordError` the item's samples
    (``fallback_ids(index)``) become `BadRecord`s."""
    records: list[Record] = []
    for index, item in enumerate(items):
        place = where(index)
        try:
            records.extend(parse(index, item, place))
        except RecordError as exc:
            records.extend(
                BadRecord(sample_id, place, f"{place}: {exc}") for sample_id in fallback_ids(index)
            )
    return records


def image_path(images: Path | None, name: str, default_root: Path) -> Path:
    """``name`` resolved against the images directory (or ``default_root``) unless absolute."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    return (images if images is not None else default_root) / path
