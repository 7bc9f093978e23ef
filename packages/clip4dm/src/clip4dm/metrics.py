"""torchmetrics metrics: F-CLIPScore and CLIPScore of (image, caption) pairs, synchronised across
DDP processes by torchmetrics.

Needs the optional extra: ``pip install 'clip4dm[torchmetrics]'``.

```python
from clip4dm.metrics import FCLIPScore

metric = FCLIPScore("hf:openai/clip-vit-base-patch32", keep_pairs=True)
metric.update(images, captions)   # any number of times, on any number of ranks
metric.compute()                  # tensor: the mean F-CLIPScore over every pair seen
metric.compute_details().pairs    # per pair: the score and (F-CLIPScore) the scored words
```

Scales (``scale=``), per pair, with ``cos⁺ = max(cos(image, template + caption), 0)``:

- ``"clip-s"`` (default): `CLIPScore` is ``2.5 · cos⁺`` (CLIP-S, Hessel et al.; 0 to 2.5) and
  `FCLIPScore` is ``negative_sum · (1 − cos⁺)``, the reference definition, the very value of
  `Detection.f_clip_score`.
- ``"torchmetrics"``: `CLIPScore` is ``100 · cos⁺`` (0 to 100, like
  ``torchmetrics.multimodal.CLIPScore``) and `FCLIPScore` is ``negative_sum · (100 − 100 · cos⁺)``:
  the factor ``1 − cos⁺`` put on the same 0 to 100 scale, which makes it exactly 100 times the
  ``"clip-s"`` value.

``compute()`` is the mean of the per-pair scores. Two differences from
``torchmetrics.multimodal.CLIPScore`` remain on the ``torchmetrics`` scale: that class clamps the
*mean* of the cosines at 0 where we clamp each pair (as the papers do), and it encodes the bare
caption where we encode ``template + caption`` (pass ``template=""`` to encode the bare caption).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import torch
from torch import Tensor

from clip4dm.defaults import DEFAULT_MODEL, Mode
from clip4dm.detector import CLIP4DM
from clip4dm.results import Detection
from clip4dm.scores import CLIP_SCORE_WEIGHT
from vl_core.cli import require_extra
from vl_core.clip import ClipBackbone
from vl_core.devices import DeviceLike, DTypeLike
from vl_core.images import ImageSource, load_image

require_extra("torchmetrics", package="clip4dm", extra="torchmetrics", feature="clip4dm.metrics")

from torchmetrics import Metric  # noqa: E402  (after the check that names the extra)
from torchmetrics.utilities import dim_zero_cat  # noqa: E402

__all__ = ["CLIPScore", "FCLIPScore", "PairScore", "Scale", "ScoreDetails"]

Scale: TypeAlias = Literal["clip-s", "torchmetrics"]
"""The score scale of a metric: ``clip-s`` (weight 2.5, the papers') or ``torchmetrics`` (100)."""

SCALES: tuple[str, ...] = get_args(Scale)
TORCHMETRICS_WEIGHT = 100.0

Images: TypeAlias = ImageSource | Sequence[ImageSource]
"""One image, a sequence of images, or a batch tensor ``[N, C, H, W]`` (or array ``[N, H, W, C]``)."""


@dataclass(frozen=True)
class PairScore:
    """The result of one (image, caption) pair: its ``score`` on the metric's scale, the cosine
    of image and ``template + caption``, and for `FCLIPScore` the full `Detection` (its words,
    the misaligned ones, the raw CLIP-S and F-CLIPScore); ``detection`` is ``None`` for
    `CLIPScore`."""

    caption: str
    score: float
    cosine: float
    detection: Detection | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"caption", "score", "cosine", "detection"}`` (JSON-serialisable)."""
        return {
            "caption": self.caption,
            "score": self.score,
            "cosine": self.cosine,
            "detection": None if self.detection is None else self.detection.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairScore:
        """The `PairScore` whose `to_dict` is ``data``. Raises ``ValueError`` for a malformed one."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a pair must be a JSON object, got {type(data).__name__}")
        caption, score, cosine = data.get("caption"), data.get("score"), data.get("cosine")
        if not isinstance(caption, str):
            raise ValueError(f"'caption' must be a string, got {caption!r}")
        for key, value in (("score", score), ("cosine", cosine)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key!r} must be a number, got {value!r}")
        detection = data.get("detection")
        return cls(
            caption=caption,
            score=float(score),  # type: ignore[arg-type]
            cosine=float(cosine),  # type: ignore[arg-type]
            detection=None if detection is None else Detection.from_dict(detection),
        )


@dataclass(frozen=True)
class ScoreDetails:
    """What `compute_details` returns: the mean ``score`` (NaN when no pair was seen), the number
    of pairs, the scale, and one `PairScore` per pair: in update order, rank by rank under DDP."""

    score: float
    count: int
    scale: str
    pairs: list[PairScore]

    def to_dict(self) -> dict[str, Any]:
        """``{"score", "count", "scale", "pairs"}`` with pairs as `PairScore.to_dict`."""
        return {
            "score": self.score,
            "count": self.count,
            "scale": self.scale,
            "pairs": [pair.to_dict() for pair in self.pairs],
        }


def _as_lists(images: Images, captions: str | Sequence[str]) -> tuple[list[ImageSource], list[str]]:
    """``(images, captions)`` as two lists of the same length; raises ``ValueError`` otherwise."""
    texts = [captions] if isinstance(captions, str) else list(captions)
    sources: list[ImageSource]
    if isinstance(images, Tensor):
        sources = list(images.unbind(0)) if images.ndim == 4 else [images]
    elif isinstance(images, np.ndarray):
        sources = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, list | tuple):
        sources = list(images)
    else:
        sources = [images]  # type: ignore[list-item]  # one path, URL, bytes, file or PIL image
    if len(sources) != len(texts):
        raise ValueError(f"{len(sources)} images but {len(texts)} captions")
    return sources, texts


class _PairMetric(Metric):
    """Shared plumbing: the detector, the states (a float64 sum and a count, summed across ranks;
    the kept pairs as UTF-8 JSON lines, concatenated across ranks) and `compute_details`."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: Tensor
    count: Tensor
    pairs: list[Tensor]

    def __init__(
        self,
        model: str | CLIP4DM,
        settings: dict[str, Any],
        device: DeviceLike | None,
        dtype: DTypeLike | str | None,
        *,
        scale: Scale,
        batch_size: int,
        keep_pairs: bool,
        **kwargs: Any,
    ) -> None:
        detector = _detector(model, settings, device, dtype)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        super().__init__(**kwargs)
        self.detector = detector
        self.scale: Scale = scale
        self.batch_size = batch_size
        self.keep_pairs = bool(keep_pairs)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if self.keep_pairs:
            self.add_state("pairs", [], dist_reduce_fx="cat")

    def _score_pairs(self, images: list[ImageSource], captions: list[str]) -> list[PairScore]:
        raise NotImplementedError

    def update(self, images: Images, captions: str | Sequence[str]) -> None:
        """Score the pairs ``zip(images, captions)`` and add them to the state.

        ``images``: one image or a sequence of them (anything `vl_core.images.load_image` reads:
        paths, URLs, PIL images, uint8 or [0, 1] float arrays HxWxC and tensors CxHxW), or a batch
        tensor ``[N, C, H, W]``; ``captions``: one string or a sequence, one per image. Returns
        nothing. Raises ``ValueError`` for mismatched lengths, an empty caption or an unreadable
        image (`vl_core.images.ImageLoadError`); nothing is added to the state then.
        """
        sources, texts = _as_lists(images, captions)
        if not texts:
            return
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"caption #{i} is empty or whitespace-only: {text!r}")
        scored = self._score_pairs(sources, texts)
        self.score_sum += math.fsum(pair.score for pair in scored)
        self.count += len(scored)
        if self.keep_pairs:
            lines = "".join(json.dumps(pair.to_dict()) + "\n" for pair in scored)
            data = np.frombuffer(lines.encode("utf-8"), dtype=np.uint8)
            # Stored in the metric's float dtype, the dtype torchmetrics gives the empty state of a
            # rank that saw no pair (byte values 0..255 are exact in every float dtype).
            self.pairs.append(torch.from_numpy(data.copy()).to(self.device, self.dtype))

    def compute(self) -> Tensor:
        """The mean score over every pair seen (on every rank under DDP), a float64 scalar tensor
        on the metric's scale; NaN when no pair was seen."""
        return self.score_sum / self.count

    def compute_details(self) -> ScoreDetails:
        """The mean score and every pair's `PairScore`, gathered from all ranks under DDP (each
        rank returns the same). Returns a `ScoreDetails`; raises ``RuntimeError`` unless the metric
        was built with ``keep_pairs=True``."""
        if not self.keep_pairs:
            raise RuntimeError(
                f"{type(self).__name__} keeps no per-pair results: construct it with "
                "keep_pairs=True to use compute_details()"
            )
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            count = int(self.count)
            score = float(self.score_sum) / count if count else math.nan
            state: list[Tensor] | Tensor = self.pairs
            empty = isinstance(state, list) and not state
            blob = b"" if empty else bytes(dim_zero_cat(state).to(torch.uint8).cpu().tolist())
        pairs = [
            PairScore.from_dict(json.loads(line)) for line in blob.decode("utf-8").splitlines()
        ]
        return ScoreDetails(score=score, count=count, scale=self.scale, pairs=pairs)


def _detector(
    model: str | CLIP4DM,
    settings: dict[str, Any],
    device: DeviceLike | None,
    dtype: DTypeLike | str | None,
) -> CLIP4DM:
    """``model`` itself when it is a `CLIP4DM` (then no setting may be given), else a new one."""
    given = {key: value for key, value in settings.items() if value is not None}
    if isinstance(model, CLIP4DM):
        if device is not None:
            given["device"] = device
        if dtype is not None:
            given["dtype"] = dtype
        if given:
            raise ValueError(
                f"{', '.join(sorted(given))} cannot be given with a ready CLIP4DM detector "
                "(its own settings are used): set them on the detector instead"
            )
        return model
    return CLIP4DM(model, device=device or "auto", dtype=dtype or "auto", **given)


class FCLIPScore(_PairMetric):
    """Mean F-CLIPScore of (image, caption) pairs, as a ``torchmetrics.Metric``.

    Each pair is scored by `CLIP4DM.detect_batch` (so the numbers are exactly its
    ``f_clip_score``): ``negative_sum · (1 − max(cos, 0))``, ≤ 0 in threshold mode, 0 when no word
    is misaligned, more negative when more is. On ``scale="torchmetrics"`` every score is 100 × that
    (``negative_sum · (100 − 100·max(cos, 0))``, the factor on the 0..100 scale of torchmetrics'
    CLIPScore). Higher is better.

    ``model`` is a model name as for `CLIP4DM` (``hf:...``, ``openclip:...``, a local directory) or
    a ready `CLIP4DM`; ``mode``, ``epsilon``, ``layers``, ``template``, ``device`` and ``dtype`` are
    `CLIP4DM`'s settings (its defaults when ``None``) and may be given only with a name. The model
    stays on its own device: ``metric.to(...)`` moves the states only. ``keep_pairs=True`` keeps
    each pair's words for `compute_details` (gathered across ranks). Other keywords go to
    ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    Raises ``ValueError`` for an unknown scale, a ``batch_size`` below 1, settings given with a
    ready detector, and whatever `CLIP4DM` raises for the model.
    """

    def __init__(
        self,
        model: str | CLIP4DM = DEFAULT_MODEL,
        *,
        mode: Mode | None = None,
        epsilon: float | None = None,
        layers: int | None = None,
        template: str | None = None,
        device: DeviceLike | None = None,
        dtype: DTypeLike | str | None = None,
        scale: Scale = "clip-s",
        batch_size: int = 32,
        keep_pairs: bool = False,
        **kwargs: Any,
    ) -> None:
        settings = {"mode": mode, "epsilon": epsilon, "layers": layers, "template": template}
        super().__init__(
            model,
            settings,
            device,
            dtype,
            scale=scale,
            batch_size=batch_size,
            keep_pairs=keep_pairs,
            **kwargs,
        )

    def _score_pairs(self, images: list[ImageSource], captions: list[str]) -> list[PairScore]:
        factor = TORCHMETRICS_WEIGHT if self.scale == "torchmetrics" else 1.0
        detections = self.detector.detect_batch(images, captions, batch_size=self.batch_size)
        return [
            PairScore(d.caption, factor * d.f_clip_score, d.cosine, d if self.keep_pairs else None)
            for d in detections
        ]


class CLIPScore(_PairMetric):
    """Mean CLIPScore of (image, caption) pairs, as a ``torchmetrics.Metric``, with the same
    interface as `FCLIPScore`.

    Per pair ``2.5 · max(cos, 0)`` (CLIP-S, Hessel et al.; the `Detection.clip_score` of
    `CLIP4DM`), or ``100 · max(cos, 0)`` on ``scale="torchmetrics"``, where ``cos`` is the cosine of
    the image and ``template + caption`` (default template ``"A photo depicts "``, the CLIP-S
    prompt). Only a forward pass: no attribution. Higher is better.

    ``model``: a model name or a ready `CLIP4DM` (its backbone and template are used);
    ``template``, ``device``, ``dtype`` only with a name. ``keep_pairs=True`` keeps each pair's
    score and cosine for `compute_details` (``detection`` is ``None``).

    Raises ``ValueError`` for an unknown scale, a ``batch_size`` below 1, settings given with a
    ready detector, and whatever `CLIP4DM` raises for the model.
    """

    def __init__(
        self,
        model: str | CLIP4DM = DEFAULT_MODEL,
        *,
        template: str | None = None,
        device: DeviceLike | None = None,
        dtype: DTypeLike | str | None = None,
        scale: Scale = "clip-s",
        batch_size: int = 32,
        keep_pairs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            {"template": template},
            device,
            dtype,
            scale=scale,
            batch_size=batch_size,
            keep_pairs=keep_pairs,
            **kwargs,
        )

    def _score_pairs(self, images: list[ImageSource], captions: list[str]) -> list[PairScore]:
        weight = TORCHMETRICS_WEIGHT if self.scale == "torchmetrics" else CLIP_SCORE_WEIGHT
        backbone = self.detector.backbone
        template = self.detector.template
        out: list[PairScore] = []
        for start in range(0, len(captions), self.batch_size):
            texts = captions[start : start + self.batch_size]
            pictures = [load_image(image) for image in images[start : start + self.batch_size]]
            with torch.no_grad():
                image_emb = backbone.encode_image(backbone.preprocess(pictures))
                text_emb = backbone.encode_text(
                    backbone.tokenize([template + t for t in texts]).ids
                )
                cosines = ClipBackbone.cosine(image_emb, text_emb).float().cpu().tolist()
            for text, cosine in zip(texts, cosines, strict=True):
                out.append(PairScore(text, weight * max(cosine, 0.0), cosine))
        return out
