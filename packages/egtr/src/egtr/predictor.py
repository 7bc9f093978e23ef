"""``EGTRPredictor``: images in, :class:`~egtr.SceneGraph` out."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from egtr.builders import load_pretrained
from egtr.loading import Preprocessing
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.postprocess import OBJECT_SCORES, build_scene_graph, check_threshold
from egtr.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchInputs,
    preprocess,
    resized_size,
)
from egtr.scene_graph import DEFAULT_OBJECT_THRESHOLD, SceneGraph
from vl_core.devices import DeviceLike, DTypeLike, resolve_device, resolve_dtype
from vl_core.images import ImageSource, load_image


class EGTRPredictor:
    """Run an EGTR model on images: load, preprocess, batch, post-process.

    ``model_or_dir`` is a model, a directory written by ``save_pretrained`` / ``egtr convert``, or
    ``hf:ORG/NAME``, a Hugging Face Hub id (opened with :func:`egtr.builders.load_pretrained`,
    strictly; see :meth:`from_pretrained`).
    ``device`` / ``dtype`` ``"auto"``: CUDA with bf16 (or fp16) when available, else CPU fp32.
    ``top_k``, ``graph_constrained``, ``object_score``, ``min_size`` and ``max_size`` default to the
    model config's values. ``object_threshold``: objects scoring at least this are listed even
    when no kept relation uses them (``None``: only the objects of kept relations).
    ``relation_threshold``: of the ``top_k`` relations, only those scoring at least this are kept
    (``None``, the default: all of them); see :func:`egtr.postprocess.build_scene_graph`.

    Batching: by default only images with the same resized shape share a forward pass, so a
    result never depends on which other images were in the batch (Deformable DETR's input
    GroupNorm sees padded positions, so padding shifts outputs slightly). ``pad_batches=True``
    pads mixed sizes into one batch with a pixel mask instead: faster, not bit-identical.

    Raises (at construction) the errors of :func:`~egtr.builders.load_pretrained`
    (``ModelNotFoundError`` and ``ModelUnavailableError``, also ``FileNotFoundError``;
    ``WrongModelKindError`` and ``ModelDirectoryError``; all ``ValueError``), and ``ValueError``
    for an unknown device or dtype, a negative ``top_k``, an ``object_score`` not in
    ``OBJECT_SCORES``, or an ``object_threshold`` or ``relation_threshold`` outside [0, 1].
    """

    def __init__(
        self,
        model_or_dir: EGTRForSceneGraphGeneration | str | os.PathLike[str],
        device: DeviceLike = "auto",
        dtype: DTypeLike | str = "auto",
        *,
        top_k: int | None = None,
        graph_constrained: bool | None = None,
        object_score: str | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        pad_batches: bool = False,
        object_threshold: float | None = DEFAULT_OBJECT_THRESHOLD,
        relation_threshold: float | None = None,
    ) -> None:
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if object_score is not None and object_score not in OBJECT_SCORES:
            raise ValueError(f"object_score must be one of {OBJECT_SCORES}, got {object_score!r}")
        check_threshold("object_threshold", object_threshold)
        check_threshold("relation_threshold", relation_threshold)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(model_or_dir, EGTRForSceneGraphGeneration):
            model = model_or_dir
        else:
            model = load_pretrained(model_or_dir)
        model.to(device=self.device, dtype=self.dtype)  # type: ignore[call-arg]
        model.eval()  # type: ignore[no-untyped-call]
        self.model = model
        config = self.model.config
        self.top_k = config.top_k if top_k is None else top_k
        self.graph_constrained = (
            config.graph_constrained if graph_constrained is None else graph_constrained
        )
        self.object_score = config.object_score if object_score is None else object_score
        self.min_size = config.image_min_size if min_size is None else min_size
        self.max_size = config.image_max_size if max_size is None else max_size
        self.pad_batches = pad_batches
        self.object_threshold = object_threshold
        self.relation_threshold = relation_threshold

    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike[str],
        device: DeviceLike = "auto",
        dtype: DTypeLike | str = "auto",
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        **settings: Any,
    ) -> EGTRPredictor:
        """A predictor for the model ``name``: a local model directory or ``hf:ORG/NAME``.

        A hub model is fetched once into the Hugging Face cache (the first download says so in
        one line on stderr); with ``HF_HUB_OFFLINE=1`` only the cache is read, and a model that
        is not there fails at once. ``revision`` / ``token`` apply to hub ids; ``settings`` are
        the constructor's keywords (``top_k``, ``object_threshold``, ``relation_threshold``,
        ...). The load is strict, as for a directory.

        Returns the predictor. Raises what the constructor raises, notably
        :class:`~egtr.builders.ModelUnavailableError` naming a hub id that cannot be had here.
        """
        model = load_pretrained(name, revision=revision, token=token)
        return cls(model, device, dtype, **settings)

    def predict(
        self, images: ImageSource | Sequence[ImageSource], *, batch_size: int = 1
    ) -> list[SceneGraph]:
        """One :class:`SceneGraph` per image (a single image also gives a one-element list).

        Raises ``vl_core.images.ImageLoadError`` (a ``ValueError``) naming an image that cannot
        be read, and ``ValueError`` when ``batch_size < 1``.
        """
        return list(self.iter_predict(images, batch_size=batch_size))

    def iter_predict(
        self, images: ImageSource | Sequence[ImageSource], *, batch_size: int = 1
    ) -> Iterator[SceneGraph]:
        """Like :meth:`predict`, yielding each graph as soon as its batch is done.

        Raises what :meth:`predict` raises: ``ImageLoadError`` for an unreadable image and
        ``ValueError`` when ``batch_size < 1``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sources = _as_list(images)
        for start in range(0, len(sources), batch_size):
            batch = [load_image(src) for src in sources[start : start + batch_size]]
            yield from self.predict_loaded(batch)

    def predict_loaded(self, images: Sequence[Image.Image]) -> list[SceneGraph]:
        """Graphs of already loaded RGB images, in order, in one go (see the class docs on batching).

        Returns one :class:`SceneGraph` per image (an empty list for no images).
        """
        if not images:
            return []
        if self.pad_batches:
            return self._forward(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            shape = resized_size(*image.size, self.min_size, self.max_size)
            groups.setdefault(shape, []).append(index)
        results: dict[int, SceneGraph] = {}
        for indices in groups.values():
            graphs = self._forward([images[i] for i in indices])
            results.update(zip(indices, graphs, strict=True))
        return [results[i] for i in range(len(images))]

    @property
    def preprocessing(self) -> Preprocessing:
        """How this predictor turns images into model inputs (resize bounds, normalisation,
        ``pad_batches``), for :func:`egtr.loading.load_blocks`; returns a `Preprocessing`."""
        config = self.model.config
        return Preprocessing(
            min_size=self.min_size,
            max_size=self.max_size,
            mean=tuple(config.image_mean or IMAGENET_MEAN),
            std=tuple(config.image_std or IMAGENET_STD),
            pad_batches=self.pad_batches,
        )

    def _forward(self, images: Sequence[Image.Image]) -> list[SceneGraph]:
        preprocessing = self.preprocessing
        inputs = preprocess(
            images,
            min_size=preprocessing.min_size,
            max_size=preprocessing.max_size,
            mean=preprocessing.mean,
            std=preprocessing.std,
        )
        return self.predict_inputs(inputs)

    @torch.inference_mode()
    def predict_inputs(self, inputs: BatchInputs) -> list[SceneGraph]:
        """Graphs of preprocessed images (:func:`egtr.preprocessing.preprocess`, or the batches
        of :func:`egtr.loading.load_blocks`): one forward pass of the whole batch.

        Returns one :class:`SceneGraph` per image of ``inputs``, in order.
        """
        out = self.model(
            pixel_values=inputs.pixel_values.to(self.device, self.dtype, non_blocking=True),
            pixel_mask=inputs.pixel_mask.to(self.device, non_blocking=True),
        )
        assert out.logits is not None
        assert out.pred_boxes is not None
        assert out.pred_rel is not None
        config = self.model.config
        graphs = []
        for index, size in enumerate(inputs.original_sizes):
            conn = out.pred_connectivity[index] if out.pred_connectivity is not None else None
            graphs.append(
                build_scene_graph(
                    out.logits[index],
                    out.pred_boxes[index],
                    out.pred_rel[index],
                    conn,
                    size,
                    object_labels=config.object_labels,
                    predicate_labels=config.predicate_labels,
                    top_k=self.top_k,
                    graph_constrained=self.graph_constrained,
                    object_score=self.object_score,
                    object_threshold=self.object_threshold,
                    relation_threshold=self.relation_threshold,
                )
            )
        return graphs


def _as_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """A single source (path, bytes, PIL image, array, tensor) or a list of them, as a list."""
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]  # type: ignore[list-item]
