"""Tiny random CLIP models saved to local files, for tests and offline demos.

They use the real CLIP BPE vocabulary (shipped inside open_clip), so tokenization is the real one;
only the transformer weights are random. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, cast

import torch

TINY_WIDTH = 32
TINY_HEADS = 2
TINY_LAYERS = 4
TINY_IMAGE = 32
TINY_PATCH = 8
TINY_EMBED = 24


def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's CLIP vocabulary and merges, with HF's special-token spelling."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    tok = SimpleTokenizer()
    vocab = dict(tok.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    return vocab, [(a, b) for a, b in merges]


def make_tiny_hf_clip(directory: str | Path, *, seed: int = 0, layers: int = TINY_LAYERS) -> Path:
    """Write a random tiny ``CLIPModel`` + tokenizer + image processor to ``directory``."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_bpe()
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_WIDTH,
        intermediate_size=4 * TINY_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=TINY_HEADS,
        max_position_embeddings=77,
        projection_dim=TINY_EMBED,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=TINY_WIDTH,
        intermediate_size=4 * TINY_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=TINY_HEADS,
        image_size=TINY_IMAGE,
        patch_size=TINY_PATCH,
        projection_dim=TINY_EMBED,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TINY_EMBED
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    _spread_weights(model, seed)
    model.save_pretrained(out)
    CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=77).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE},
        crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE},
    ).save_pretrained(out)
    return out


def tiny_openclip_config(layers: int = TINY_LAYERS) -> dict[str, Any]:
    """An open_clip architecture config (``model_cfg``) for a tiny ViT CLIP."""
    return {
        "embed_dim": TINY_EMBED,
        "vision_cfg": {
            "image_size": TINY_IMAGE,
            "layers": 2,
            "width": TINY_WIDTH,
            "head_width": TINY_WIDTH // TINY_HEADS,
            "patch_size": TINY_PATCH,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": TINY_WIDTH,
            "heads": TINY_HEADS,
            "layers": layers,
        },
    }


def make_tiny_openclip(
    directory: str | Path, *, seed: int = 0, layers: int = TINY_LAYERS, arch: str = "vlcore-tiny"
) -> Path:
    """Write a random tiny open_clip model as a local directory (``open_clip_config.json`` +
    ``open_clip_model.safetensors``) and register ``arch`` so ``ARCH/checkpoint`` also works."""
    import open_clip
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_openclip_config(layers)
    arch_file = out / f"{arch}.json"
    arch_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(arch_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    _spread_weights(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    torch.save(state, out / "open_clip_pytorch_model.bin")
    preprocess = {
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
    )
    return out


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Re-draw weights with a larger spread so a tiny random model has non-trivial attention."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embedding" not in name:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
