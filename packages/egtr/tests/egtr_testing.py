"""Helpers shared by egtr's tests: tiny random configs/models and synthetic images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from egtr import EGTRConfig


def tiny_config(**overrides: object) -> EGTRConfig:
    from transformers import ResNetConfig

    from egtr import EGTRConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )
    kwargs: dict[str, object] = {
        "backbone_config": backbone,
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_n_points": 2,
        "decoder_n_points": 2,
        "num_queries": 6,
        "id2label": {0: "cat", 1: "dog", 2: "table"},
        "num_rel_labels": 4,
        "rel_labels": ["on", "near", "has", "under"],
        "image_min_size": 64,
        "image_max_size": 96,
    }
    kwargs.update(overrides)
    return EGTRConfig(**kwargs)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and frequency buffer non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        for name, buf in model.named_buffers():
            if name == "triplet_dist":
                buf.copy_(torch.randn(buf.shape, generator=gen))
            elif name == "rel_dist":
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.1)


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def legacy_names(state: dict[str, torch.Tensor], decoder_layers: int) -> dict[str, torch.Tensor]:
    """Our keys written back in the released naming (independent inverse of the key map)."""
    inverse = [
        (r"^model\.backbone\.model\.", "model.backbone.conv_encoder.model."),
        (r"\.mlp\.(fc1|fc2)\.", r".\1."),
        (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."),
        (r"^relation_head\.gate\.", "rel_predictor_gate."),
        (r"^relation_head\.rel_mlp\.", "rel_predictor."),
        (r"^relation_head\.connectivity_mlp\.", "connectivity_layer."),
        (r"^relation_head\.", ""),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl in inverse:
            key = re.sub(pattern, repl, key)
        if key.startswith(("class_embed.", "bbox_embed.")):
            head, rest = key.split(".", 1)
            for layer in range(decoder_layers):
                out[f"{head}.{layer}.{rest}"] = value
        else:
            out[key] = value
    return out


def save_lightning(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``state`` saved as a released Lightning checkpoint (``model.`` prefix, extra entries)."""
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 7},
        path,
    )
    return path
