"""HF transformers CLIP behind :class:`~vl_core.clip.ClipBackbone`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import Tensor, nn

from vl_core._hf_vision import pooled_image_features
from vl_core.checkpoints import CheckpointError, summarise_keys
from vl_core.cli import quiet_transformers
from vl_core.clip import ClipBackbone
from vl_core.hub import WrongModelError, hub_errors, is_offline, looks_like_path
from vl_core.tokens import ClipTokenizer

_HINT = (
    "Point at a local directory instead: `hf:/path/to/dir` (or the bare path) holding config.json, "
    "model.safetensors and the tokenizer/preprocessor files, e.g. one written by "
    "`CLIPModel.save_pretrained(dir)` + `CLIPProcessor.save_pretrained(dir)`"
)


def _check_loading(name: str, info: dict[str, Any]) -> None:
    """Raise `CheckpointError` when the weights left keys missing, unexpected or mis-shaped."""
    problems = []
    for key, what in (
        ("missing_keys", "missing"),
        ("unexpected_keys", "unexpected"),
        ("mismatched_keys", "of another shape"),
    ):
        keys = [k if isinstance(k, str) else str(k[0]) for k in info.get(key) or ()]
        if keys:
            problems.append(f"{len(keys)} {what} ({summarise_keys(keys, limit=4)})")
    if problems:
        raise CheckpointError(
            f"the weights of {name} do not match a CLIP model: {'; '.join(problems)} tensor(s): "
            "the checkpoint is incomplete or of another architecture"
        )


def _check_kind(name: str, config: dict[str, Any]) -> None:
    """Raise `WrongModelError` when ``config`` (a config.json) is not a CLIP's."""
    kind = config.get("model_type")
    if kind != "clip":
        raise WrongModelError(
            f"{name} is not a CLIP model (its config.json says model_type {kind!r}): give a "
            "CLIP model directory or hub id"
        )


class HFTokenizer(ClipTokenizer):
    """Adapter over ``transformers.CLIPTokenizer`` (tokenizers backend)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self._tok = tokenizer
        vocab = tokenizer.get_vocab()
        eot = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        super().__init__(
            context_length=context_length,
            sot_id=int(tokenizer.bos_token_id),
            eot_id=eot,
            pad_id=int(pad) if pad is not None else eot,
        )
        self._id_to_token = {int(i): str(t) for t, i in vocab.items()}
        # A literal "<|endoftext|>" in user text must stay text, not become the control token
        # (CLIP pools at the first end-of-text id); open_clip's tokenizer behaves so too.
        tokenizer.backend_tokenizer.encode_special_tokens = True

    def encode(self, text: str) -> list[int]:
        # the backend tokenizer directly: no python-side warning about the model's max length
        return [
            int(i) for i in self._tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        ]

    def token_string(self, token_id: int) -> str:
        return self._id_to_token[token_id]

    def normalize(self, text: str) -> str:
        normalizer = self._tok.backend_tokenizer.normalizer
        text = str(normalizer.normalize_str(text)) if normalizer is not None else text.lower()
        return text.strip()  # as open_clip's cleaning; the pre-tokenizer drops edge spaces anyway


class HFClipBackbone(ClipBackbone):
    """``transformers.CLIPModel`` with eager attention (sdpa returns no attention probabilities)."""

    family = "hf"
    # CLIPTextTransformer always applies a causal mask and pools at the (first) end-of-text id,
    # with position ids taken from the start of its table whatever the sequence length.
    trims_text_padding = True
    #: `encode_image` computes the pooled image features with `vl_core._hf_vision` (the last
    #: layer for the class token only, fused attention); ``False`` runs the model's own forward.
    #: Either way the value is the same up to rounding.
    fast_image: bool = True

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: HFTokenizer,
        processor: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(name, model, tokenizer, device, dtype)
        self._processor = processor

    @classmethod
    def load(cls, source: str, device: torch.device, dtype: torch.dtype) -> HFClipBackbone:
        """Load from a hub id or a local directory (eager attention forced), strictly.

        Raises ``FileNotFoundError`` for a directory without config.json, `WrongModelError` when
        the config is not a CLIP's, `CheckpointError` when the weights leave keys missing or
        unexpected, and `ModelNotAvailableError` when the files cannot be had here.
        """
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, PretrainedConfig

        local = Path(source).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json: not an HF CLIP model directory")
        if not local.exists() and looks_like_path(source):
            raise FileNotFoundError(f"no such HF model directory: {local}")
        kwargs: dict[str, Any] = {"local_files_only": is_offline() or local.is_dir()}
        where = str(local) if local.is_dir() else source
        name = f"hf:{source}"
        with hub_errors(name, _HINT), quiet_transformers():
            config, _ = PretrainedConfig.get_config_dict(where, **kwargs)
        _check_kind(name, config)  # before loading: another kind would load as a random CLIP
        with hub_errors(name, _HINT), quiet_transformers():
            loaded: Any = CLIPModel.from_pretrained(
                where, attn_implementation="eager", output_loading_info=True, **kwargs
            )
            model, info = cast(tuple[nn.Module, dict[str, Any]], loaded)
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            processor = CLIPImageProcessor.from_pretrained(where, **kwargs)
        _check_loading(name, info)
        context = int(cast(Any, model.config).text_config.max_position_embeddings)
        return cls(source, model, HFTokenizer(tokenizer, context), processor, device, dtype)

    @property
    def _clip(self) -> Any:
        return cast(Any, self.model)

    @property
    def text_layers(self) -> Sequence[nn.Module]:
        return cast(Sequence[nn.Module], self._clip.text_model.encoder.layers)

    def text_attention_name(self, layer: int) -> str:
        return f"text_model.encoder.layers.{layer % self.num_text_layers}.self_attn"

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        batch = self._processor(images=list(images), return_tensors="pt")
        return cast(Tensor, batch["pixel_values"]).to(self.device, self.dtype)

    def encode_image(self, pixels: Tensor) -> Tensor:
        pixels = pixels.to(self.device, self.dtype)
        if self.fast_image:  # exact, with less work: see vl_core._hf_vision
            pooled = pooled_image_features(self._clip.vision_model, pixels)
        else:
            pooled = self._clip.vision_model(pixel_values=pixels).pooler_output
        return cast(Tensor, self._clip.visual_projection(pooled))

    def encode_text(self, ids: Tensor) -> Tensor:
        out = self._clip.text_model(input_ids=ids.to(self.device))
        return cast(Tensor, self._clip.text_projection(out.pooler_output))
