"""Packaging facts of vl_core: version, public API, typing marker."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import vl_core


def test_version_matches_distribution_metadata() -> None:
    assert vl_core.__version__ == metadata.version("vl-core")


def test_public_api_names_resolve() -> None:
    for name in vl_core.__all__:
        assert hasattr(vl_core, name), name


def test_py_typed_marker_present() -> None:
    assert (Path(vl_core.__file__).parent / "py.typed").is_file()
