"""Shared fixtures: tiny random CLIPs of both families, written to disk once per session and loaded
back through the public factory (``vl_core.factory.load_clip``), as a user would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from vl_core.clip import ClipBackbone
from vl_core.factory import load_clip
from vl_core.testing import make_tiny_hf_clip, make_tiny_openclip

# An accidental download must fail at once instead of hanging. (Importing vl_core does not import
# huggingface_hub, which reads this variable once, at its own import.)
os.environ["HF_HUB_OFFLINE"] = "1"

#: Texts exercising the tokenizer's corner cases: punctuation runs, quotes, hyphens, contractions,
#: non-ASCII letters, digits, repeated whitespace.
TEXTS = (
    "A photo of a cat...",
    'He said "hi."',
    "a red T-shirt",
    "don't stop",
    "café au lait",
    "route 66 in 1999",
    "  two   spaces\tand a tab ",
)

PixelMaker = Callable[[ClipBackbone, int], Tensor]


@pytest.fixture(scope="session")
def texts() -> tuple[str, ...]:
    return TEXTS


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny") / "hf-clip")


@pytest.fixture(scope="session")
def openclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Also registers the open_clip architecture ``vlcore-tiny`` (for ``ARCH/FILE`` names)."""
    return make_tiny_openclip(tmp_path_factory.mktemp("tiny") / "open-clip")


@pytest.fixture(scope="session")
def hf_clip(hf_dir: Path) -> ClipBackbone:
    return load_clip(f"hf:{hf_dir}", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def openclip_clip(openclip_dir: Path) -> ClipBackbone:
    return load_clip(f"openclip:{openclip_dir}", device="cpu", dtype="float32")


@pytest.fixture(scope="session", params=["hf", "openclip"])
def clip(request: pytest.FixtureRequest) -> ClipBackbone:
    """Runs a test once per family. Shared: tests must leave the model as they found it."""
    backbone: ClipBackbone = request.getfixturevalue(f"{request.param}_clip")
    return backbone


@pytest.fixture(params=["hf", "openclip"])
def fresh_clip(request: pytest.FixtureRequest, hf_dir: Path, openclip_dir: Path) -> ClipBackbone:
    """A private copy of each family's model, for tests that change parameter flags."""
    source = f"hf:{hf_dir}" if request.param == "hf" else f"openclip:{openclip_dir}"
    return load_clip(source, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def make_pixels() -> PixelMaker:
    """``make_pixels(backbone, count)``: preprocessed random RGB images of differing sizes."""

    def make(backbone: ClipBackbone, count: int) -> Tensor:
        generator = torch.Generator().manual_seed(count)
        images = []
        for index in range(count):
            height, width = 36 + 5 * index, 40 + 7 * index
            pixels = torch.randint(0, 256, (height, width, 3), generator=generator)
            images.append(Image.fromarray(pixels.to(torch.uint8).numpy()))
        return backbone.preprocess(images)

    return make
