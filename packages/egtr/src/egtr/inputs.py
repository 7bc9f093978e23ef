"""The images of an ``egtr predict`` run: files, folders, glob patterns and list files.

Each input gets a row **id** (the ``id`` of its results row, which a resumed run matches):

- a **file** given on the command line, matched by a **glob pattern** or listed in a **list
  file**: the path as written (``photos/a.jpg``, ``/data/b.png``), as before folders existed;
- a file found in a **folder**: its path relative to that folder, with ``/`` separators
  (``egtr predict photos/`` gives ``a.jpg`` and ``trip/b.png``), so a run resumes under the same
  ids wherever the folder is later found (``egtr predict /mnt/new/photos``). With **several
  folders** on one command line the ids are the folder as written joined with that relative path
  (``photos/trip/b.png``), so that ``x.jpg`` of two folders stays two images.

Folders are searched recursively for files with an image extension (`IMAGE_EXTENSIONS`, any
case); hidden files and folders (names starting with ``.``) are skipped, and so are links to
folders. The files of a folder come sorted by relative path (folder by folder). A pattern (an
argument with ``*``, ``?`` or ``[`` that is not an existing path) is expanded with ``**``
matching any depth, keeping files with an image extension, sorted the same way. A list file
holds one path per line (``-``: standard input, UTF-8); blank lines are skipped, surrounding
whitespace is ignored, and relative paths are relative to the current folder, like paths on the
command line; listed paths are taken as they are (not searched or expanded). Command-line inputs
come first, in their order, then the listed paths.

A file given or listed that does not exist is not refused here: it becomes an error row of the
run (like an unreadable image), so one missing file never stops a long list. A folder without
images, a pattern matching no image and a list file that cannot be read or lists nothing are
refused (`InputError`) before anything is written. An image reached twice (same file) is
predicted once; two different files with the same id are refused.

`default_workers` is the default of ``egtr predict --workers`` (the processes that decode images,
:mod:`egtr.loading`); it lives here, with the other torch-free decisions of a run.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "InputError",
    "default_workers",
    "find_images",
    "is_pattern",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
"""The file extensions (compared in lower case) that folder searches and patterns keep."""


def default_workers(cpus: int | None = None) -> int:
    """The default number of loading processes: ``min(4, cpus - 1)``, so 0 (load in the main
    process) on a single CPU. ``cpus`` defaults to the CPUs this process may run on.

    Returns the number of workers.
    """
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on every platform
            cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class InputError(ValueError):
    """An input argument that names no image: ``what``, ``where`` (the argument) and ``fix``."""

    def __init__(self, what: str, where: str, fix: str) -> None:
        super().__init__(f"{what} ({where}): {fix}")
        self.what = what
        self.where = where
        self.fix = fix


@dataclass(frozen=True)
class ImageInput:
    """One image of the run: its row ``id``, the ``path`` it is read from, and the ``folder``
    argument it was found in (``None`` for a file given, matched or listed)."""

    id: str
    path: str
    folder: str | None = None


def is_pattern(argument: str) -> bool:
    """Whether ``argument`` is a glob pattern: it has ``*``, ``?`` or ``[`` and names no
    existing file or folder."""
    return any(mark in argument for mark in "*?[") and not os.path.lexists(argument)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(folder: str) -> list[str]:
    """The image files below ``folder``: relative paths with ``/``, sorted folder by folder."""
    found: list[tuple[str, ...]] = []

    def fail(exc: OSError) -> None:
        raise exc

    try:
        for current, folders, files in os.walk(folder, onerror=fail):
            folders[:] = [name for name in folders if not name.startswith(".")]
            relative = os.path.relpath(current, folder)
            parts = () if relative == os.curdir else tuple(relative.split(os.sep))
            for name in files:
                if name.startswith(".") or not _is_image_name(name):
                    continue
                if os.path.isfile(os.path.join(current, name)):
                    found.append((*parts, name))
    except OSError as exc:
        raise InputError(
            f"cannot read the folder ({exc.strerror or exc})",
            folder,
            "check that it exists and that you may read it",
        ) from exc
    return ["/".join(parts) for parts in sorted(found)]


def _pattern_images(pattern: str) -> list[str]:
    """The image files matching ``pattern``, sorted folder by folder (as in a folder)."""
    return sorted(
        (
            path
            for path in glob.glob(pattern, recursive=True)
            if _is_image_name(path) and os.path.isfile(path)
        ),
        key=lambda path: path.split(os.sep),
    )


def _listed(list_file: str, stdin: IO[str] | None) -> list[str]:
    """The paths of a list file (``-``: ``stdin``); raises `InputError` when it is unreadable or
    lists nothing."""
    where = "--list -" if list_file == "-" else f"--list {list_file}"
    try:
        if list_file == "-":
            text = (stdin if stdin is not None else sys.stdin).read()
        else:
            with open(list_file, encoding="utf-8-sig") as handle:
                text = handle.read()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the list is not UTF-8 text (byte {exc.start})",
            where,
            "give a text file with one image path per line",
        ) from exc
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        raise InputError(
            "the list file does not exist"
            if missing
            else f"cannot read the list file ({exc.strerror or exc})",
            where,
            "give a text file with one image path per line, or - for standard input",
        ) from exc
    paths = [line.strip() for line in text.splitlines()]
    paths = [path for path in paths if path]
    if not paths:
        raise InputError(
            "the list names no image", where, "give a text file with one image path per line"
        )
    return paths


def find_images(
    arguments: Sequence[str], list_file: str | None = None, *, stdin: IO[str] | None = None
) -> list[ImageInput]:
    """The images named by ``arguments`` (files, folders, patterns) and the lines of
    ``list_file`` (``-`` reads ``stdin``, default ``sys.stdin``), in order, without repeats.

    Returns the `ImageInput` list (ids as described in the module docstring). Raises
    `InputError` for a folder without images, a pattern matching no image, a list file that cannot
    be read or lists nothing, two different files with one id, and when nothing is given at all.
    """
    folders = len({os.path.realpath(argument) for argument in arguments if os.path.isdir(argument)})
    found: list[ImageInput] = []
    for argument in arguments:
        if os.path.isdir(argument):
            names = _folder_images(argument)
            if not names:
                kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise InputError(
                    "the folder holds no images",
                    argument,
                    f"give a folder with files ending in {kinds}",
                )
            for name in names:
                path = os.path.join(argument, *name.split("/"))
                found.append(ImageInput(name if folders == 1 else path, path, argument))
        elif is_pattern(argument):
            matches = _pattern_images(argument)
            if not matches:
                raise InputError(
                    "the pattern matches no image",
                    argument,
                    "check the pattern (quote it, so that the shell passes it on as written)",
                )
            found.extend(ImageInput(path, path) for path in matches)
        else:
            found.append(ImageInput(argument, argument))
    if list_file is not None:
        found.extend(ImageInput(path, path) for path in _listed(list_file, stdin))
    if not found:
        raise InputError(
            "no images given",
            "IMAGE",
            "give image files, folders or patterns, or --list FILE",
        )
    return _unique(found)


def _unique(found: Sequence[ImageInput]) -> list[ImageInput]:
    """``found`` without a second visit of a file; raises `InputError` for an id shared by two
    different files."""
    by_id: dict[str, ImageInput] = {}
    files: set[str] = set()
    kept: list[ImageInput] = []
    for item in found:
        real = os.path.realpath(item.path)
        other = by_id.get(item.id)
        if other is not None and os.path.realpath(other.path) != real:
            raise InputError(
                f"two images have the id {item.id!r}",
                f"{other.path} and {item.path}",
                "give the folder's images by their paths, or predict them in separate runs",
            )
        if other is not None or real in files:
            continue
        by_id[item.id] = item
        files.add(real)
        kept.append(item)
    return kept
