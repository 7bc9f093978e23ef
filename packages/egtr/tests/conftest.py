"""Fixtures of egtr's tests: a tiny random EGTR model (no downloads), saved once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # for `egtr_testing` (tests use importlib mode)

from egtr_testing import randomise, tiny_config

from egtr import EGTRForSceneGraphGeneration


@pytest.fixture(scope="session")
def tiny_model() -> EGTRForSceneGraphGeneration:
    torch.manual_seed(0)
    model = EGTRForSceneGraphGeneration(tiny_config()).eval()
    randomise(model)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("tiny_egtr")
    tiny_model.save_pretrained(path)
    return path
