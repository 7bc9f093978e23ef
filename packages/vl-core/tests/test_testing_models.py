"""The public builders of `vl_core.testing` (CLIP BPE tokenizer, HF CLIP config) that the tiny test
models and ``tools/train_clip.py`` share."""

from __future__ import annotations

import json
from pathlib import Path

from vl_core.testing import clip_bpe_tokenizer, hf_clip_config, make_tiny_hf_clip

TEXT = "a small red circle to the left of a blue square, 3.5 T-shirts!"


def test_clip_bpe_tokenizer_is_openai_clips() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = clip_bpe_tokenizer()
    assert len(tokenizer.get_vocab()) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer(TEXT)["input_ids"] == [49406, *SimpleTokenizer().encode(TEXT), 49407]
    assert clip_bpe_tokenizer(context_length=32).model_max_length == 32


def test_hf_clip_config_shape_and_special_tokens() -> None:
    config = hf_clip_config(
        clip_bpe_tokenizer(),
        text_width=48,
        text_layers=3,
        text_heads=4,
        vision_width=64,
        vision_layers=2,
        vision_heads=8,
        image_size=40,
        patch_size=10,
        embed_dim=24,
    )
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        49408,
        49406,
        49407,
        49407,
    )
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (48, 192, 3)
    assert (text.num_attention_heads, text.max_position_embeddings) == (4, 77)
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (64, 256, 2)
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (8, 40, 10)
    assert config.projection_dim == text.projection_dim == vision.projection_dim == 24


def test_tiny_model_is_built_from_them(tmp_path: Path) -> None:
    out = make_tiny_hf_clip(tmp_path, layers=2)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert saved["text_config"]["num_hidden_layers"] == 2
    assert saved["text_config"]["vocab_size"] == 49408
    assert saved["text_config"]["eos_token_id"] == 49407
    assert saved["vision_config"]["patch_size"] == 8
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(tokenizer["model"]["vocab"]) == 49408
