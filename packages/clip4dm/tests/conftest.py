"""Shared fixtures for clip4dm tests: tiny random CLIP models written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# An accidental hub download must fail fast instead of hanging (no network here, nor in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random HF ``CLIPModel`` directory (load it as ``hf:<dir>``)."""
    from vl_core.testing import make_tiny_hf_clip

    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


@pytest.fixture(scope="session")
def tiny_openclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random open_clip model directory (load it as ``openclip:<dir>``)."""
    from vl_core.testing import make_tiny_openclip

    return make_tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"))
