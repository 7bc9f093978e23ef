"""open_clip CLIP behind :class:`~vl_core.clip.ClipBackbone`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import Tensor, nn

from vl_core.clip import ClipBackbone
from vl_core.hub import hub_errors
from vl_core.tokens import ClipTokenizer

_HINT = (
    "Point at local files instead: `openclip:ARCH/path/to/checkpoint.(pt|bin|safetensors)` "
    "or `openclip:/path/to/dir` holding open_clip_config.json and the weights"
)


class OpenClipTokenizer(ClipTokenizer):
    """Adapter over open_clip's ``SimpleTokenizer`` (the OpenAI CLIP BPE)."""

    def __init__(self, tokenizer: Any) -> None:
        if not hasattr(tokenizer, "encoder") or not hasattr(tokenizer, "eot_token_id"):
            raise TypeError(
                f"open_clip tokenizer {type(tokenizer).__name__} is not the CLIP BPE "
                "SimpleTokenizer; only CLIP-BPE open_clip models are supported"
            )
        self._tok = tokenizer
        super().__init__(
            context_length=int(tokenizer.context_length),
            sot_id=int(tokenizer.sot_token_id),
            eot_id=int(tokenizer.eot_token_id),
            pad_id=0,
        )
        self._id_to_token = {int(i): str(t) for t, i in tokenizer.encoder.items()}

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text)]

    def token_string(self, token_id: int) -> str:
        return self._id_to_token[token_id]

    def normalize(self, text: str) -> str:
        return str(self._tok.clean_fn(text)).lower()


def parse_openclip_source(source: str) -> tuple[str, str | None]:
    """Split ``ARCH/TAG_OR_FILE`` (or a local dir / schema name) into open_clip's two arguments."""
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no open_clip_config.json: not an open_clip model directory"
            )
        return f"local-dir:{path}", None
    if source.startswith(("/", ".", "~")):  # architecture names never start like a path
        raise FileNotFoundError(f"no such open_clip model directory: {path}")
    arch, sep, rest = source.partition("/")
    if not sep or not rest:
        raise ValueError(
            f"open_clip model {source!r} needs a pretrained tag or checkpoint: "
            "use `openclip:ARCH/TAG` (e.g. ViT-B-32/openai) or `openclip:ARCH/path/to/weights`"
        )
    return arch, rest


class OpenClipBackbone(ClipBackbone):
    """An open_clip ``CLIP``/``CustomTextCLIP`` whose text attention is re-exposed by capture."""

    family = "openclip"

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: OpenClipTokenizer,
        transform: Callable[[Image.Image], Tensor],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(name, model, tokenizer, device, dtype)
        self._transform = transform
        clip = cast(Any, model)
        self._prefix = "" if hasattr(clip, "token_embedding") else "text."
        text_root = clip if not self._prefix else clip.text
        self._resblocks = cast(Sequence[nn.Module], text_root.transformer.resblocks)

    @classmethod
    def load(cls, source: str, device: torch.device, dtype: torch.dtype) -> OpenClipBackbone:
        """Load ``ARCH/TAG``, ``ARCH/checkpoint-file`` or a local directory."""
        import open_clip

        model_name, pretrained = parse_openclip_source(source)
        if pretrained is not None and model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip architecture {model_name!r} in {source!r}; "
                "see open_clip.list_models() (or register a JSON config with "
                "open_clip.add_model_config)"
            )
        looks_like_file = pretrained is not None and ("/" in pretrained or Path(pretrained).suffix)
        if looks_like_file and not Path(str(pretrained)).expanduser().is_file():
            raise FileNotFoundError(f"open_clip checkpoint file not found: {pretrained}")
        with hub_errors(f"openclip:{source}", _HINT):
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, weights_only=True
            )
            tokenizer = open_clip.get_tokenizer(model_name)
        return cls(source, model, OpenClipTokenizer(tokenizer), transform, device, dtype)

    @property
    def text_layers(self) -> Sequence[nn.Module]:
        return self._resblocks

    def text_attention_name(self, layer: int) -> str:
        return f"{self._prefix}transformer.resblocks.{layer % self.num_text_layers}.attn"

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        pixels = torch.stack([self._transform(image) for image in images])
        return pixels.to(self.device, self.dtype)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return cast(Tensor, cast(Any, self.model).encode_image(pixels.to(self.device, self.dtype)))

    def encode_text(self, ids: Tensor) -> Tensor:
        return cast(Tensor, cast(Any, self.model).encode_text(ids.to(self.device)))
