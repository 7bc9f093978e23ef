"""Tiny random CLIP models saved to local files, for tests and offline demos.

They use the real CLIP BPE vocabulary (shipped inside open_clip), so tokenization is the real one;
only the transformer weights are random. Nothing is downloaded. Also `intra_op_threads`, for tests
that need a given torch thread count.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

TINY_WIDTH = 32
TINY_HEADS = 2
TINY_LAYERS = 4
TINY_IMAGE = 32
TINY_PATCH = 8
TINY_EMBED = 24


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Torch's intra-op thread count of the calling thread is ``count`` inside the block, and what
    it was before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def clip_bpe_tokenizer(context_length: int = 77) -> Any:
    """CLIP's BPE tokenizer as a ``transformers.CLIPTokenizer``, built offline from the vocabulary
    bundled with open_clip (49,408 tokens; what the tiny test models and the shipped shapes-world
    CLIP save as their tokenizer).

    Returns the tokenizer. Raises ``ImportError`` without open_clip or transformers.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=context_length)


def hf_clip_config(
    tokenizer: Any,
    *,
    text_width: int,
    text_layers: int,
    text_heads: int,
    vision_width: int,
    vision_layers: int,
    vision_heads: int,
    image_size: int,
    patch_size: int,
    embed_dim: int,
    context_length: int = 77,
) -> Any:
    """A ``transformers.CLIPConfig`` of the given shape for ``tokenizer``'s vocabulary (e.g.
    `clip_bpe_tokenizer`): MLPs 4× wide, start/end-of-text ids from the vocabulary, padding with
    the end-of-text token, as OpenAI's CLIP.

    Returns the config. Raises ``KeyError`` when the vocabulary lacks ``<|startoftext|>`` or
    ``<|endoftext|>``, ``ImportError`` without transformers.
    """
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    vocab = tokenizer.get_vocab()
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        max_position_embeddings=context_length,
        projection_dim=embed_dim,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=embed_dim,
    )
    return CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=embed_dim
    )


#: Real CLIP shapes (text width/layers/heads, vision width/layers/heads, patch, image, embed dim).
CLIP_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {
        "tw": TINY_WIDTH,
        "tl": TINY_LAYERS,
        "th": TINY_HEADS,
        "vw": TINY_WIDTH,
        "vl": 2,
        "vh": TINY_HEADS,
        "patch": TINY_PATCH,
        "image": TINY_IMAGE,
        "embed": TINY_EMBED,
    },
    "vit-b-32": {
        "tw": 512,
        "tl": 12,
        "th": 8,
        "vw": 768,
        "vl": 12,
        "vh": 12,
        "patch": 32,
        "image": 224,
        "embed": 512,
    },
    "vit-l-14": {
        "tw": 768,
        "tl": 12,
        "th": 12,
        "vw": 1024,
        "vl": 24,
        "vh": 16,
        "patch": 14,
        "image": 224,
        "embed": 768,
    },
}


def make_tiny_hf_clip(
    directory: str | Path, *, seed: int = 0, layers: int = TINY_LAYERS, shape: str = "tiny"
) -> Path:
    """Write a random ``CLIPModel`` (tiny by default, or a real CLIP ``shape`` from
    :data:`CLIP_SHAPES`) + tokenizer + image processor to ``directory``."""
    from transformers import CLIPImageProcessor, CLIPModel

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_bpe_tokenizer()
    dims = CLIP_SHAPES[shape]
    config = hf_clip_config(
        tokenizer,
        text_width=dims["tw"],
        text_layers=layers if shape == "tiny" else dims["tl"],
        text_heads=dims["th"],
        vision_width=dims["vw"],
        vision_layers=dims["vl"],
        vision_heads=dims["vh"],
        image_size=dims["image"],
        patch_size=dims["patch"],
        embed_dim=dims["embed"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    _spread_weights(model, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": dims["image"]},
        crop_size={"height": dims["image"], "width": dims["image"]},
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
