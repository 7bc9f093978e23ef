"""A slow, literal implementation of CLIP4DM's attribution (spec §1), for tests and benchmarks.

One pair at a time, the full model under autograd (parameters included), one ``autograd.grad``
call per layer — the procedure of the authors' code. Never used by :class:`clip4dm.CLIP4DM`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from PIL import Image
from torch import Tensor

from vl_core.capture import Capture
from vl_core.clip import ClipBackbone


def literal_relevance(backbone: ClipBackbone, image: Image.Image, text: str, layers: int) -> Tensor:
    """``R[e, 1:e]`` with ``R = (1/k) Σ mean_heads(∂s/∂A ⊙ A)`` for ``text`` (template included)."""
    model = backbone.model
    model.requires_grad_(True)
    try:
        tokens = backbone.tokenize([text])
        total = backbone.num_text_layers
        chosen = list(range(total - layers, total))
        if backbone.family == "hf":
            # HF returns the eager attention probabilities themselves: no capture machinery.
            clip = cast(Any, model)
            pixels = backbone.preprocess([image])
            image_emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
            out = clip.text_model(input_ids=tokens.ids, output_attentions=True)
            text_emb = clip.text_projection(out.pooler_output)
            attentions = [out.attentions[layer] for layer in chosen]
            score = torch.nn.functional.cosine_similarity(image_emb, text_emb)[0]
        else:
            names = [backbone.text_attention_name(layer) for layer in chosen]
            with Capture(model, attentions=names) as capture:
                image_emb = backbone.encode_image(backbone.preprocess([image]))
                text_emb = backbone.encode_text(tokens.ids)
                score = torch.nn.functional.cosine_similarity(image_emb, text_emb)[0]
                attentions = [capture.attentions[name] for name in names]
        size = tokens.ids.shape[1]
        relevance = torch.zeros(size, size, dtype=torch.float64, device=score.device)
        for attention in attentions:
            (grad,) = torch.autograd.grad(score, attention, retain_graph=True)
            relevance += (grad * attention)[0].mean(dim=0).detach().double()
        relevance /= layers
        eot = int(tokens.eot[0])
        return relevance[eot, 1:eot].cpu()
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)
