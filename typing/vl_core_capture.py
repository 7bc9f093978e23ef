"""A researcher uses vl-core directly: load a CLIP, capture attention, take gradients."""

import torch
from PIL import Image

from vl_core import (
    Capture,
    ClipBackbone,
    TokenBatch,
    batched_grad,
    load_clip,
    load_image,
    partial_autograd,
)

backbone: ClipBackbone = load_clip("openclip:ViT-B-32/openai", device="auto", dtype="auto")
image: Image.Image = load_image("photo.jpg")
tokens: TokenBatch = backbone.tokenize(["a photo of a cat"])
with torch.no_grad():
    image_emb: torch.Tensor = backbone.encode_image(backbone.preprocess([image]))
names: list[str] = [backbone.text_attention_name(i) for i in (-3, -2, -1)]
with (
    Capture(backbone.model, attentions=names) as capture,
    partial_autograd(backbone.model, backbone.text_layers[-3]),
):
    score = backbone.cosine(image_emb, backbone.encode_text(tokens.ids))
    grads: list[torch.Tensor] = batched_grad(score, [capture.attentions[n] for n in names])
eot: int = int(tokens.eot[0])
