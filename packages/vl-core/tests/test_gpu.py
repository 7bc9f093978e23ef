"""CUDA checks of the shared core: capture and one-pass gradients on the GPU match the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vl_core import Capture, batched_grad, load_clip, partial_autograd
from vl_core.testing import make_tiny_openclip

pytestmark = pytest.mark.gpu


def test_openclip_attention_gradients_cuda_equal_cpu(tmp_path: Path) -> None:
    directory = make_tiny_openclip(tmp_path / "oc")
    grads = {}
    for device in ("cpu", "cuda"):
        backbone = load_clip(f"openclip:{directory}", device=device, dtype=torch.float32)
        tokens = backbone.tokenize(["a photo of a red cat", "two dogs on the grass"])
        image = torch.zeros(2, 3, 32, 32, device=device)
        with torch.no_grad():
            image_emb = backbone.encode_image(image)
        names = [backbone.text_attention_name(i) for i in (-2, -1)]
        with (
            Capture(backbone.model, attentions=names) as cap,
            partial_autograd(backbone.model, backbone.text_layers[-2]),
        ):
            score = backbone.cosine(image_emb, backbone.encode_text(tokens.ids))
            grads[device] = [
                g.cpu() for g in batched_grad(score, [cap.attentions[n] for n in names])
            ]
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
