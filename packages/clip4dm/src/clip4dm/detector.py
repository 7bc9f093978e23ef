"""CLIP4DM: per-word misalignment scores from gradients over CLIP's text attention."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from clip4dm._download import announce_download
from clip4dm.alignment import Word, WordTokens, align_words, split_words
from clip4dm.defaults import (
    DEFAULT_EPSILON,
    DEFAULT_LAYERS,
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    MODES,
    Mode,
)
from clip4dm.results import Detection, WordScore
from clip4dm.scores import clip_score, f_clip_score, ref_clip_score, select_misaligned
from vl_core.capture import Capture
from vl_core.clip import ClipBackbone
from vl_core.devices import DeviceLike, DTypeLike
from vl_core.factory import load_clip
from vl_core.gradients import PartialAutograd, batched_grad
from vl_core.images import ImageSource, load_image
from vl_core.overlap import alongside, split_threads
from vl_core.tokens import TokenBatch

__all__ = [
    "CLIP4DM",
    "DEFAULT_EPSILON",
    "DEFAULT_LAYERS",
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "Relevance",
]

logger = logging.getLogger("clip4dm")

#: Trimmed text widths are multiples of this (see `CLIP4DM._text_width`).
TEXT_WIDTH_STEP = 8
#: With ``parallel_towers=None``, the towers run side by side on a CPU for batches of at most
#: this many pairs (at larger batches each tower alone spreads well over the threads).
PARALLEL_TOWERS_MAX_BATCH = 1
#: The image tower's share of the threads while the text tower runs beside it (the text tower at
#: one pair gains little from more threads); it takes them all once the text tower is done.
IMAGE_THREAD_SHARE = 0.75


@dataclass(frozen=True)
class Relevance:
    """Raw attribution of a batch: per pair, the relevance ``r_i`` of content tokens
    ``1 .. e-1`` of ``template + text`` (fp32 or wider, CPU), the cosine, the text embeddings."""

    tokens: TokenBatch
    relevance: list[Tensor]
    cosine: Tensor
    text_embeddings: Tensor


class CLIP4DM:
    """Finds the words of a caption that do not match the image, from a pre-trained CLIP.

    Token relevance is ``R[e, i]`` with ``R = (1/k) Σ_{last k layers} mean_heads(∂s/∂A ⊙ A)``,
    ``s`` the unscaled image–text cosine, ``A`` the text self-attention probabilities and ``e`` the
    end-of-text position (no clamping, no rollout). A word scores the mean of its tokens.

    ``model`` is a name for :func:`vl_core.factory.load_clip` (``hf:<id or dir>``,
    ``openclip:<arch>/<tag or file>``, a local HF directory) or an already loaded backbone.

    A model that must be downloaded from the Hugging Face Hub is announced first, in one line on
    stderr (`clip4dm._download.announce_download`).

    ``compile=True`` runs the image encoder through ``torch.compile`` (the first call of each new
    batch shape compiles, which takes tens of seconds; later calls reuse it). It gives the same
    scores to float rounding (1e-5 relative). It pays on a GPU, where one pair at a time is bound
    by kernel launches; on a CPU it did not pay in our measurements (BENCHMARKS.md).

    ``parallel_towers``: on a CPU with two or more torch threads, a batch of one pair runs its
    image tower on a helper thread beside the text tower (`vl_core.overlap`), with 3/4 of the
    threads (at least one each); the image tower takes every thread once the text tower is done.
    At one pair the text tower is bound by reading its weights from memory and gains little from
    more threads, so this cut the latency by about 1.2x on two cores (BENCHMARKS.md). The values
    computed are the same. ``None`` (default) does this at batch 1 only, ``True`` at every batch
    size, ``False`` never; it is never done on a GPU, on one thread, or with ``compile=True``.

    Raises ``ValueError`` for an unknown mode, a ``layers`` outside the model's text layers, an
    unknown model name, a model that is not a CLIP (`vl_core.hub.WrongModelError`) or whose
    weights do not match it (`vl_core.checkpoints.CheckpointError`), and ``OSError`` for a
    missing directory or weights that cannot be had here (`vl_core.hub.ModelNotAvailableError`).
    """

    def __init__(
        self,
        model: str | ClipBackbone = DEFAULT_MODEL,
        *,
        mode: Mode = "threshold",
        epsilon: float = DEFAULT_EPSILON,
        layers: int = DEFAULT_LAYERS,
        template: str = DEFAULT_TEMPLATE,
        device: DeviceLike = "auto",
        dtype: DTypeLike | str = "auto",
        compile: bool = False,
        parallel_towers: bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if isinstance(model, ClipBackbone):
            self.backbone = model
        else:
            announce_download(model)  # one line on stderr before a first download from the hub
            self.backbone = load_clip(model, device=device, dtype=dtype)
        total = self.backbone.num_text_layers
        if not 1 <= layers <= total:
            raise ValueError(
                f"layers must be in 1..{total} (text layers of the model), got {layers}"
            )
        self.mode: Mode = mode
        self.epsilon = float(epsilon)
        self.layers = layers
        self.template = template
        self._attention_names = [
            self.backbone.text_attention_name(i) for i in range(total - layers, total)
        ]
        # Built once per detector: the module lookup and the parameter walk are the costly parts
        # of setting up capture; each call only adds and removes its hooks (microseconds). The
        # hooks are not left on between calls, so a backbone shared with other code is unchanged.
        network = self.backbone.model
        self._capture = Capture(network, attentions=self._attention_names)
        self._partial = PartialAutograd(network, self.backbone.text_layers[total - layers])
        self.compiled = bool(compile)
        self.parallel_towers = parallel_towers
        self._image_encoder: Callable[[Tensor], Tensor] = self.backbone.encode_image
        if compile:
            self._image_encoder = torch.compile(self.backbone.encode_image)

    @property
    def model_name(self) -> str:
        """The backbone's name (as given to the loader)."""
        return self.backbone.name

    def detect(
        self, image: ImageSource, text: str, *, references: Sequence[str] | None = None
    ) -> Detection:
        """Score one (image, caption) pair; returns its `Detection`.

        Raises ``ValueError`` for an empty text or an unreadable image
        (`vl_core.images.ImageLoadError`).
        """
        refs = [list(references)] if references is not None else None
        return self.detect_batch([image], [text], references=refs)[0]

    def detect_batch(
        self,
        images: Sequence[ImageSource],
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        references: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
    ) -> list[Detection]:
        """Score many pairs, ``batch_size`` at a time; returns one `Detection` per pair, in order.

        Raises ``TypeError`` when ``texts`` is a single string, ``ValueError`` for mismatched
        lengths, a ``batch_size`` below 1, an empty text or an unreadable image.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if references is not None and len(references) != len(texts):
            raise ValueError(f"{len(references)} reference lists but {len(texts)} texts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text #{i} is empty or whitespace-only: {text!r}")
        results: list[Detection] = []
        bar = tqdm(total=len(texts), desc="clip4dm", unit="pair", disable=not progress)
        with bar:
            for start in range(0, len(texts), batch_size):
                stop = start + batch_size
                refs = references[start:stop] if references is not None else None
                results.extend(self._detect_chunk(images[start:stop], texts[start:stop], refs))
                bar.update(len(texts[start:stop]))
        truncated = sum(d.truncated for d in results)
        if truncated:
            logger.warning(
                "%d caption(s) exceed the %d-token context: their last words are unscored "
                "(see Detection.unscored_words)",
                truncated,
                self.backbone.context_length,
            )
        return results

    # -- internals ----------------------------------------------------------------------------
    def _encode_images(self, images: Sequence[ImageSource]) -> Tensor:
        """Embeddings ``[batch, dim]``; each distinct image is loaded and encoded once."""
        keys: dict[object, int] = {}
        order: list[int] = []
        distinct: list[Image.Image] = []
        for image in images:
            key: object = (
                ("path", os.fspath(image)) if isinstance(image, (str, Path)) else ("obj", id(image))
            )
            if key not in keys:
                keys[key] = len(distinct)
                distinct.append(load_image(image))
            order.append(keys[key])
        with torch.no_grad():
            embeddings = self._image_encoder(self.backbone.preprocess(distinct))
        if len(distinct) == len(order):  # all distinct, in order: no index (no host copy)
            return embeddings
        return embeddings[torch.tensor(order, device=embeddings.device)]

    def token_relevance(self, images: Sequence[ImageSource], texts: Sequence[str]) -> Relevance:
        """Token relevance of ``template + text`` for each pair, with ONE backward pass.

        Returns the batch's `Relevance`; raises ``ValueError`` for an unreadable image.
        """
        return self._start_relevance(images, texts).result()

    def _start_relevance(self, images: Sequence[ImageSource], texts: Sequence[str]) -> _Pending:
        """Queue the forward and backward passes of a batch; nothing waits for the device.

        The text tower runs only over the columns up to the batch's last end-of-text token when
        the backbone allows it (`ClipBackbone.trims_text_padding`: a causal text tower pooled
        at the end-of-text token, where later positions cannot change the result).
        """
        backbone = self.backbone
        tokens = backbone.tokenizer([self.template + t for t in texts])  # on the CPU
        width = self._text_width(tokens)
        ids = tokens.ids[:, :width].to(backbone.device)
        eot = tokens.eot.to(backbone.device)
        capture = self._capture
        # on a CPU at batch 1, the image tower runs beside the text tower (vl_core.overlap)
        image_job = alongside(lambda: self._encode_images(images), threads=self._tower_threads(ids))
        try:
            with image_job as image, capture, self._partial:
                text_emb = backbone.encode_text(ids)
                cosine = backbone.cosine(image.result(), text_emb)
                attentions = [capture.attentions[name] for name in self._attention_names]
                grads = batched_grad(cosine, attentions)
        finally:
            capture.clear()  # drop the graph's tensors between calls
        batch = torch.arange(len(texts), device=ids.device)
        dtype = torch.promote_types(attentions[0].dtype, torch.float32)
        relevance = torch.zeros(len(texts), width, dtype=dtype, device=ids.device)
        for grad, attn in zip(grads, attentions, strict=True):
            # only the end-of-text row of R is needed: [batch, heads, T]
            row = grad[batch, :, eot].to(dtype) * attn[batch, :, eot].detach().to(dtype)
            relevance += row.mean(dim=1)
        relevance /= self.layers
        return _Pending(tokens, relevance, cosine.detach(), text_emb.detach())

    def _tower_threads(self, ids: Tensor) -> tuple[int, int] | None:
        """``(image, text)`` intra-op threads when the image tower runs beside the text tower
        (`vl_core.overlap`), else ``None`` (one after the other, on all threads)."""
        setting = self.parallel_towers
        if setting is False or self.compiled or ids.device.type != "cpu":
            return None
        if setting is None and ids.shape[0] > PARALLEL_TOWERS_MAX_BATCH:
            return None
        return split_threads(torch.get_num_threads(), IMAGE_THREAD_SHARE)

    def _text_width(self, tokens: TokenBatch) -> int:
        """How many token columns the text tower sees for this batch: the full context, or,
        when the backbone allows it, the columns up to the last end-of-text token rounded up to
        a multiple of `TEXT_WIDTH_STEP` (a few shapes only; 8 is one AVX2 vector of float32, so
        the vectorised reductions over the keys see whole blocks). Scores then agree with the
        full width to about 3e-7 relative in float32 (BENCHMARKS.md)."""
        full = int(tokens.ids.shape[1])
        if not self.backbone.trims_text_padding:
            return full
        needed = int(tokens.eot.max()) + 1
        return min(full, -(-needed // TEXT_WIDTH_STEP) * TEXT_WIDTH_STEP)

    def _detect_chunk(
        self,
        images: Sequence[ImageSource],
        texts: Sequence[str],
        references: Sequence[Sequence[str]] | None,
    ) -> list[Detection]:
        pending = self._start_relevance(images, texts)
        ref_cos = (
            self._reference_cosines(pending.text_embeddings, references)
            if references is not None
            else None
        )
        tokens = pending.tokens
        # word alignment needs only the tokens: done while the device computes
        layouts = []
        for b, text in enumerate(texts):
            eot = int(tokens.eot[b])
            layouts.append(self._word_layout(text, tokens.ids[b, 1:eot].tolist()))
        rel = pending.result()
        return [
            self._words_to_detection(
                text,
                rel.relevance[b],
                layouts[b],
                float(rel.cosine[b]),
                tokens.truncated[b],
                ref_cos[b] if ref_cos else None,
            )
            for b, text in enumerate(texts)
        ]

    def _word_layout(self, caption: str, content: list[int]) -> list[tuple[Word, WordTokens]]:
        """The words of ``template + caption`` with the content tokens covering each."""
        words = split_words(self.template + caption)
        groups = align_words(self.backbone.tokenizer, words, content)
        return list(zip(words, groups, strict=True))

    def _words_to_detection(
        self,
        caption: str,
        relevance: Tensor,
        layout: list[tuple[Word, WordTokens]],
        cosine: float,
        truncated: bool,
        reference_cosines: list[float] | None,
    ) -> Detection:
        skip = len(self.template)
        scored: list[WordScore] = []
        unscored: list[str] = []
        index = 0
        for word, group in layout:
            if word.start < skip:
                continue  # template words are scored with the text but not reported
            if group.complete and group.tokens:
                score = float(relevance[group.tokens].mean())
                span = (word.start - skip, word.end - skip)  # in the caption as given
                scored.append(WordScore(word.text, index, score, start=span[0], end=span[1]))
            else:
                unscored.append(word.text)
            index += 1
        misaligned, negative_sum = select_misaligned(scored, self.mode, self.epsilon)
        return Detection(
            caption=caption,
            words=scored,
            misaligned=misaligned,
            negative_sum=negative_sum,
            cosine=cosine,
            clip_score=clip_score(cosine),
            f_clip_score=f_clip_score(negative_sum, cosine),
            mode=self.mode,
            truncated=truncated,
            unscored_words=unscored,
            ref_clip_score=(
                ref_clip_score(cosine, reference_cosines) if reference_cosines is not None else None
            ),
        )

    def _reference_cosines(
        self, text_emb: Tensor, references: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        flat = [self.template + r for refs in references for r in refs]
        if not flat:
            return [[] for _ in references]
        tokens = self.backbone.tokenizer(flat)
        with torch.no_grad():
            ids = tokens.ids[:, : self._text_width(tokens)]
            ref_emb = self.backbone.encode_text(ids.to(self.backbone.device))
        out: list[list[float]] = []
        pos = 0
        for b, refs in enumerate(references):
            chunk = ref_emb[pos : pos + len(refs)]
            pos += len(refs)
            sims = ClipBackbone.cosine(text_emb[b].expand_as(chunk), chunk) if len(refs) else None
            out.append([] if sims is None else [float(x) for x in sims])
        return out


@dataclass(frozen=True)
class _Pending:
    """A batch's relevance as queued on the device; `result` waits for it."""

    tokens: TokenBatch  # on the CPU
    relevance: Tensor  # [batch, width] on the device
    cosine: Tensor
    text_embeddings: Tensor

    def result(self) -> Relevance:
        """The batch's `Relevance`, on the CPU (the one wait for the device)."""
        relevance = self.relevance.cpu()
        eot = self.tokens.eot.tolist()
        return Relevance(
            tokens=self.tokens,
            relevance=[relevance[b, 1 : eot[b]] for b in range(len(eot))],
            cosine=self.cosine.cpu(),
            text_embeddings=self.text_embeddings,
        )
