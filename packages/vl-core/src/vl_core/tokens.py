"""A uniform view of CLIP's BPE tokenizers (HF transformers and open_clip)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of a batch of texts, each ``[start, tokens..., end, pad...]``.

    ``ids``: ``[batch, context_length]`` int64; ``eot``: ``[batch]`` position of the end-of-text
    token (where CLIP pools); ``truncated[b]``: whether text ``b`` lost tokens to the context length.
    """

    ids: Tensor
    eot: Tensor
    truncated: tuple[bool, ...]

    def to(self, device: torch.device | str) -> TokenBatch:
        """A copy with the tensors on ``device``."""
        return TokenBatch(self.ids.to(device), self.eot.to(device), self.truncated)


@cache
def byte_decoder() -> dict[str, int]:
    """Inverse of CLIP/GPT-2 byte-level BPE's printable-character alphabet (char → byte)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class ClipTokenizer(ABC):
    """CLIP BPE tokenizer: encode to fixed-length ids, and per-token bytes for word alignment."""

    #: Marker that CLIP BPE appends to the last token of each word.
    END_OF_WORD = "</w>"

    def __init__(self, context_length: int, sot_id: int, eot_id: int, pad_id: int) -> None:
        self.context_length = context_length
        self.sot_id = sot_id
        self.eot_id = eot_id
        self.pad_id = pad_id

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens and without truncation."""

    @abstractmethod
    def token_string(self, token_id: int) -> str:
        """The vocabulary string of one id (byte-level alphabet, ``</w>`` marks a word end)."""

    @abstractmethod
    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it before splitting (cleaned, lower-cased)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes of the normalized text that this token covers (no ``</w>``)."""
        text = self.token_string(token_id)
        if text.endswith(self.END_OF_WORD):
            text = text[: -len(self.END_OF_WORD)]
        table = byte_decoder()
        return bytes(table[ch] for ch in text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of content ids (special and padding ids are skipped)."""
        specials = {self.sot_id, self.eot_id, self.pad_id}
        words: list[str] = []
        current = bytearray()
        for token_id in ids:
            if token_id in specials:
                continue
            current += self.token_bytes(token_id)
            if self.token_string(token_id).endswith(self.END_OF_WORD):
                words.append(current.decode("utf-8", errors="replace"))
                current = bytearray()
        if current:
            words.append(current.decode("utf-8", errors="replace"))
        return " ".join(words)

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenize a batch to ``context_length`` (start + content + end, then padding)."""
        if isinstance(texts, str):
            raise TypeError("pass a sequence of texts, not a single string")
        room = self.context_length - 2
        ids = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        eot = torch.empty(len(texts), dtype=torch.long)
        truncated: list[bool] = []
        for row, text in enumerate(texts):
            content = self.encode(text)
            truncated.append(len(content) > room)
            content = content[:room]
            seq = [self.sot_id, *content, self.eot_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            eot[row] = len(seq) - 1
        return TokenBatch(ids=ids, eot=eot, truncated=tuple(truncated))
