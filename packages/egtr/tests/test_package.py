"""Packaging facts of egtr: version, public API, typing marker."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import egtr


def test_version_matches_distribution_metadata() -> None:
    assert egtr.__version__ == metadata.version("egtr")


def test_public_api_names_resolve() -> None:
    for name in egtr.__all__:
        assert hasattr(egtr, name), name


def test_py_typed_marker_present() -> None:
    assert (Path(egtr.__file__).parent / "py.typed").is_file()
