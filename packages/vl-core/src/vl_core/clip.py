"""One interface over CLIP models of both families (HF transformers and open_clip)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vl_core.tokens import ClipTokenizer, TokenBatch


class ClipBackbone(ABC):
    """A loaded CLIP model with its tokenizer and image preprocessing.

    Parameters never require gradients (inference only); attribution methods get gradients with
    respect to activations through :func:`vl_core.gradients.partial_autograd`.
    """

    #: ``"hf"`` or ``"openclip"``.
    family: str

    #: Whether `encode_text` accepts ids cut right after the batch's last end-of-text column
    #: (``ids[:, : eot.max() + 1]``) and gives the same embeddings, to float rounding: true of a
    #: causal text tower pooled at the end-of-text token, where later positions change nothing.
    trims_text_padding: bool = False

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: ClipTokenizer,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.name = name
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    # --- text tower structure -------------------------------------------------------------
    @property
    @abstractmethod
    def text_layers(self) -> Sequence[nn.Module]:
        """The residual blocks of the text transformer, first to last."""

    @abstractmethod
    def text_attention_name(self, layer: int) -> str:
        """Qualified name (in ``self.model``) of text layer ``layer``'s attention module."""

    @property
    def num_text_layers(self) -> int:
        """The number of transformer layers of the text encoder."""
        return len(self.text_layers)

    @property
    def context_length(self) -> int:
        """The tokenizer's context length (77 for CLIP)."""
        return self.tokenizer.context_length

    # --- encoding ---------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """Pixel tensor ``[batch, 3, H, W]`` on the model's device and dtype."""

    @abstractmethod
    def encode_image(self, pixels: Tensor) -> Tensor:
        """Image embeddings ``[batch, dim]`` (not normalized)."""

    @abstractmethod
    def encode_text(self, ids: Tensor) -> Tensor:
        """Text embeddings ``[batch, dim]`` (not normalized), pooled at the end-of-text token.

        ``ids`` are ``[batch, context_length]``, or shorter when `trims_text_padding` is true.
        """

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids on the model's device."""
        return self.tokenizer(texts).to(self.device)

    @staticmethod
    def cosine(image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Row-wise cosine similarity ``[batch]`` (no logit scale), in fp32 or wider."""
        dtype = torch.promote_types(
            torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32
        )
        return F.cosine_similarity(image_emb.to(dtype), text_emb.to(dtype), dim=-1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, layers={self.num_text_layers}, "
            f"device={self.device}, dtype={self.dtype})"
        )
