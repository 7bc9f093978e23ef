"""The ``scene-graph-generation`` task for ``transformers.pipeline``.

Importing this module registers the task with transformers' pipeline registry (and, through
:mod:`egtr.modeling`, EGTR with ``AutoConfig`` / ``AutoModel``)::

    import egtr.pipeline  # registers "scene-graph-generation"
    from transformers import pipeline

    sgg = pipeline("scene-graph-generation", model="egtr-vg/", device="cpu")
    sgg("photo.jpg")  # {"image_size": [w, h], "objects": [...], "relations": [...]}
    sgg(["a.jpg", "https://example.com/b.jpg", pil_image], batch_size=8)  # one dict per image

Inputs are whatever :func:`vl_core.images.load_image` reads: paths, ``http(s)`` URLs, bytes, PIL
images, arrays, tensors. Each result is a plain dict, :meth:`egtr.SceneGraph.to_dict`: objects
with ``(x1, y1, x2, y2)`` boxes in pixels of the original image, label id and name, score and
query; relations with ``subject`` / ``object`` indices into the objects, predicate id and name,
and score. They are the graphs :class:`~egtr.EGTRPredictor` gives for the same model, images and
settings (the same preprocessing, batching and post-processing).

A model given by name (a local directory, or an ``ORG/NAME`` hub id as transformers names it) is
opened with the strict :func:`egtr.builders.load_pretrained`: a missing, unexpected or wrongly
shaped weight is an error, never a random initialisation. A model object may be given as well
(``model=load_pretrained("hf:ORG/NAME")``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from egtr.builders import HUB_PREFIX, load_pretrained
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.postprocess import OBJECT_SCORES, build_scene_graph, check_threshold
from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD, preprocess
from egtr.scene_graph import DEFAULT_OBJECT_THRESHOLD
from vl_core.images import DEFAULT_TIMEOUT, load_image

__all__ = ["TASK", "SceneGraphPipeline"]

TASK = "scene-graph-generation"
"""The task name under which :class:`SceneGraphPipeline` is registered."""

_PREPROCESS = ("min_size", "max_size", "timeout")
_POSTPROCESS = (
    "top_k",
    "graph_constrained",
    "object_score",
    "object_threshold",
    "relation_threshold",
)
_OUTPUTS = ("logits", "pred_boxes", "pred_rel", "pred_connectivity")


class SceneGraphPipeline(Pipeline):
    """``pipeline("scene-graph-generation", model=...)``: images in, scene-graph dicts out.

    Keywords (at construction or per call): ``top_k``, ``graph_constrained``, ``object_score``,
    ``object_threshold`` (objects scoring at least this are listed without a relation too;
    ``None``: only relation objects; default 0.3), ``relation_threshold`` (of the ``top_k``
    relations, only those scoring at least this are kept; default ``None``: all of them),
    ``min_size`` / ``max_size`` (resizing; default: the model config's), ``timeout`` (seconds,
    for URLs), and transformers' ``batch_size`` / ``num_workers``. Defaults are the model
    config's, as for :class:`~egtr.EGTRPredictor`.

    As in :class:`~egtr.EGTRPredictor`, only images with the same resized shape share a forward
    pass, so a graph never depends on the other images of its batch.

    Returns, for one image, a dict (:meth:`egtr.SceneGraph.to_dict`); for a list, a list of them.
    Raises ``vl_core.images.ImageLoadError`` (a ``ValueError``) naming an image that cannot be
    read, ``TypeError`` for an unknown keyword and ``ValueError`` for a bad setting (a negative
    ``top_k``, an ``object_score`` not in ``OBJECT_SCORES``, an ``object_threshold`` or
    ``relation_threshold`` outside [0, 1]) or a model that is not an EGTR model.
    """

    _load_tokenizer = False  # type: ignore[assignment]
    _load_feature_extractor = False  # type: ignore[assignment]
    _load_image_processor = False  # type: ignore[assignment]
    _load_processor = False  # type: ignore[assignment]
    _load_video_processor = False  # type: ignore[assignment]

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, EGTRForSceneGraphGeneration):
            raise ValueError(
                f"the {TASK} pipeline needs an EGTR model (EGTRForSceneGraphGeneration), got "
                f"{type(model).__name__}"
            )
        super().__init__(model, *args, **kwargs)
        self.model.eval()  # type: ignore[no-untyped-call]

    def _sanitize_parameters(
        self, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        unknown = sorted(set(kwargs) - set(_PREPROCESS) - set(_POSTPROCESS))
        if unknown:
            raise TypeError(
                f"unknown keyword(s) for the {TASK} pipeline: {', '.join(unknown)} "
                f"(known: {', '.join((*_PREPROCESS, *_POSTPROCESS))})"
            )
        top_k = kwargs.get("top_k")
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        score = kwargs.get("object_score")
        if score is not None and score not in OBJECT_SCORES:
            raise ValueError(f"object_score must be one of {OBJECT_SCORES}, got {score!r}")
        check_threshold("object_threshold", kwargs.get("object_threshold"))
        check_threshold("relation_threshold", kwargs.get("relation_threshold"))
        pre = {key: kwargs[key] for key in _PREPROCESS if key in kwargs}
        post = {key: kwargs[key] for key in _POSTPROCESS if key in kwargs}
        return pre, {}, post

    def preprocess(  # type: ignore[override]
        self,
        image: Any,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Tensor]:
        """One image read (:func:`~vl_core.images.load_image`), resized and normalised; returns
        ``pixel_values [1, 3, H, W]``, ``pixel_mask [1, H, W]`` and ``original_size [1, 2]``
        (width, height)."""
        config = self.model.config
        loaded = load_image(image, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
        inputs = preprocess(
            [loaded],
            min_size=config.image_min_size if min_size is None else min_size,
            max_size=config.image_max_size if max_size is None else max_size,
            mean=config.image_mean or IMAGENET_MEAN,
            std=config.image_std or IMAGENET_STD,
        )
        return {
            "pixel_values": inputs.pixel_values,
            "pixel_mask": inputs.pixel_mask,
            "original_size": torch.tensor(inputs.original_sizes, dtype=torch.long),
        }

    def _forward(self, model_inputs: Mapping[str, Any]) -> dict[str, Tensor | None]:  # type: ignore[override]
        """Run the model on one image or a batch (lists from :meth:`get_iterator`'s collate);
        images of one resized shape share a forward. Returns the outputs, batch first, in order."""
        values = model_inputs["pixel_values"]
        masks = model_inputs["pixel_mask"]
        if isinstance(values, Tensor):
            values, masks = [values], [masks]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, pixels in enumerate(values):
            groups.setdefault(tuple(pixels.shape[-2:]), []).append(index)
        per_image: dict[int, dict[str, Tensor | None]] = {}
        for indices in groups.values():
            out = self.model(
                pixel_values=torch.cat([values[i] for i in indices]).to(self.model.dtype),
                pixel_mask=torch.cat([masks[i] for i in indices]),
            )
            for row, index in enumerate(indices):
                per_image[index] = {
                    name: None if getattr(out, name) is None else getattr(out, name)[row]
                    for name in _OUTPUTS
                }
        result: dict[str, Tensor | None] = {}
        for name in _OUTPUTS:
            parts = [per_image[i][name] for i in range(len(values))]
            result[name] = None if parts[0] is None else torch.stack(parts)  # type: ignore[arg-type]
        result["original_size"] = model_inputs["original_size"]
        return result

    def postprocess(  # type: ignore[override]
        self,
        model_outputs: Mapping[str, Any],
        top_k: int | None = None,
        graph_constrained: bool | None = None,
        object_score: str | None = None,
        object_threshold: float | None = DEFAULT_OBJECT_THRESHOLD,
        relation_threshold: float | None = None,
    ) -> dict[str, Any]:
        """The scene graph of one image as a plain dict (:meth:`egtr.SceneGraph.to_dict`)."""
        config = self.model.config
        width, height = (int(v) for v in model_outputs["original_size"][0])
        connectivity = model_outputs["pred_connectivity"]
        graph = build_scene_graph(
            model_outputs["logits"][0],
            model_outputs["pred_boxes"][0],
            model_outputs["pred_rel"][0],
            None if connectivity is None else connectivity[0],
            (width, height),
            object_labels=config.object_labels,
            predicate_labels=config.predicate_labels,
            top_k=config.top_k if top_k is None else top_k,
            graph_constrained=(
                config.graph_constrained if graph_constrained is None else graph_constrained
            ),
            object_score=config.object_score if object_score is None else object_score,
            object_threshold=object_threshold,
            relation_threshold=relation_threshold,
        )
        return graph.to_dict()

    def get_iterator(
        self,
        inputs: Any,
        num_workers: int,
        batch_size: int,
        preprocess_params: dict[str, Any],
        forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> PipelineIterator:
        """transformers' iterator over a list or a dataset of images, with a collate function that
        keeps each image's tensors apart (images are grouped by shape in :meth:`_forward`, not
        padded together). Returns the iterator of results."""
        iterator: Any = PipelineIterator
        if isinstance(inputs, Sized):
            dataset: Any = PipelineDataset(inputs, self.preprocess, preprocess_params)  # type: ignore[no-untyped-call]
        else:  # a generator: one worker at most, as transformers does
            num_workers = min(num_workers, 1)
            dataset = iterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(
            dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_collate
        )
        batches = iterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        results: PipelineIterator = iterator(batches, self.postprocess, postprocess_params)
        return results


def _collate(items: list[dict[str, Tensor]]) -> dict[str, Any]:
    """A batch of preprocessed images: their pixel tensors as lists, their sizes stacked."""
    return {
        "pixel_values": [item["pixel_values"] for item in items],
        "pixel_mask": [item["pixel_mask"] for item in items],
        "original_size": torch.cat([item["original_size"] for item in items]),
    }


class StrictEGTRLoader:
    """What ``pipeline("scene-graph-generation", model=NAME)`` loads ``NAME`` with: the strict
    :func:`egtr.builders.load_pretrained` instead of a lenient ``from_pretrained``."""

    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike[str],
        *,
        dtype: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> EGTRForSceneGraphGeneration:
        """The model ``name`` (a local directory, or a hub id ``ORG/NAME`` as transformers names
        it), loaded strictly and cast to ``dtype`` (``None`` / ``"auto"``: float32).

        Raises the errors of :func:`egtr.builders.load_pretrained` and ``TypeError`` for a
        loading option this loader does not support (``device_map``, ``quantization_config``,
        ...).
        """
        # transformers < 5.18 also passes the config's `_commit_hash` (unused here)
        ignored = {
            "_from_pipeline",
            "_commit_hash",
            "trust_remote_code",
            "local_files_only",
            "code_revision",
        }
        unsupported = sorted(set(kwargs) - ignored)
        if unsupported:
            raise TypeError(
                f"the {TASK} pipeline does not support these loading options: "
                f"{', '.join(unsupported)}"
            )
        text = os.fspath(name)
        model = load_pretrained(
            text if Path(text).is_dir() else HUB_PREFIX + text,
            revision=None if revision is None else str(revision),
            token=token,
        )
        if isinstance(dtype, torch.dtype):
            model.to(dtype=dtype)  # type: ignore[call-arg]
        return model


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=SceneGraphPipeline, pt_model=StrictEGTRLoader
)
