"""Packaging facts of clip4dm: version, public API, typing marker."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import clip4dm


def test_version_matches_distribution_metadata() -> None:
    assert clip4dm.__version__ == metadata.version("clip4dm")


def test_public_api_names_resolve() -> None:
    for name in clip4dm.__all__:
        assert hasattr(clip4dm, name), name


def test_py_typed_marker_present() -> None:
    assert (Path(clip4dm.__file__).parent / "py.typed").is_file()
