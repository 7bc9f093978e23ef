"""CUDA checks: fp16/bf16 detection on the GPU agrees with fp32 on the CPU (both families).

Tolerance (stated): the relevance vector of each pair agrees with the fp32 CPU one to a relative
L2 error of 3e-2 (fp16) / 8e-2 (bf16); the cosine to 1e-2; the most-negative word is the same
whenever the fp32 margin between the two lowest words exceeds 4x that error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip4dm import CLIP4DM
from vl_core.factory import load_clip

pytestmark = pytest.mark.gpu

CAPTIONS = [
    "a red cup of coke on a wooden table.",
    "two dogs, one cat and a bird",
    "a man in a blue T-shirt rides a horse",
    "three green apples next to a banana",
    "a kitchen with a white fridge and an oven",
    "a child holding an umbrella in the rain",
]
RELATIVE = {torch.float16: 3e-2, torch.bfloat16: 8e-2}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in CAPTIONS]


@pytest.mark.parametrize("family", ["hf", "openclip"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_on_cuda_agrees_with_fp32_cpu(
    family: str,
    dtype: torch.dtype,
    tiny_hf_dir: Path,
    tiny_openclip_dir: Path,
    images: list[Image.Image],
) -> None:
    name = f"hf:{tiny_hf_dir}" if family == "hf" else f"openclip:{tiny_openclip_dir}"
    cpu = CLIP4DM(load_clip(name, device="cpu", dtype=torch.float32), mode="most_negative")
    gpu = CLIP4DM(load_clip(name, device="cuda", dtype=dtype), mode="most_negative")
    ref = cpu.token_relevance(images, CAPTIONS)
    out = gpu.token_relevance(images, CAPTIONS)
    tol = RELATIVE[dtype]
    for b in range(len(CAPTIONS)):
        a, r = out.relevance[b].double(), ref.relevance[b].double()
        assert float((a - r).norm() / r.norm()) < tol
    assert torch.allclose(out.cosine.double(), ref.cosine.double(), atol=1e-2)
    cpu_det = cpu.detect_batch(images, CAPTIONS)
    gpu_det = gpu.detect_batch(images, CAPTIONS)
    for c, g in zip(cpu_det, gpu_det, strict=True):
        scores = sorted(w.score for w in c.words)
        margin = scores[1] - scores[0]
        scale = max(abs(s) for s in scores)
        if margin > 4 * tol * scale:
            assert g.misaligned_words == c.misaligned_words


def test_auto_dtype_on_cuda_is_half(tiny_hf_dir: Path) -> None:
    detector = CLIP4DM(f"hf:{tiny_hf_dir}", device="auto", dtype="auto")
    assert detector.backbone.device.type == "cuda"
    assert detector.backbone.dtype in (torch.float16, torch.bfloat16)
