"""egtr: one-stage scene graph generation from a Deformable DETR's decoder self-attention.

The public names below are imported lazily, so ``import egtr`` (and ``egtr --help``) stays fast
until a model is actually used.

Models are named as on the command line: a local directory, or ``hf:ORG/NAME`` for the Hugging
Face Hub (:func:`load_pretrained`, ``EGTRPredictor.from_pretrained``). transformers learns about
EGTR when :mod:`egtr.modeling` is imported (by any model-related name here): ``AutoConfig`` and
``AutoModel`` then open EGTR models; ``import egtr.pipeline`` (or ``egtr.SceneGraphPipeline``)
also registers the ``pipeline("scene-graph-generation")`` task.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "EGTRConfig": "egtr.configuration",
    "EGTRForSceneGraphGeneration": "egtr.modeling",
    "EGTROutput": "egtr.modeling",
    "EGTRPredictor": "egtr.predictor",
    "Relation": "egtr.scene_graph",
    "RelationHead": "egtr.relation_head",
    "SceneGraph": "egtr.scene_graph",
    "SceneGraphPipeline": "egtr.pipeline",
    "SceneObject": "egtr.scene_graph",
    "build_rel_dist": "egtr.relation_head",
    "build_scene_graph": "egtr.postprocess",
    "build_triplet_dist": "egtr.relation_head",
    "convert_checkpoint": "egtr.convert",
    "draw_scene_graph": "egtr.drawing",
    "egtr_open_images": "egtr.builders",
    "egtr_visual_genome": "egtr.builders",
    "load_pretrained": "egtr.builders",
    "object_scores": "egtr.postprocess",
    "resolve_model": "egtr.builders",
    "top_triplets": "egtr.postprocess",
}

__all__ = [
    "EGTRConfig",
    "EGTRForSceneGraphGeneration",
    "EGTROutput",
    "EGTRPredictor",
    "Relation",
    "RelationHead",
    "SceneGraph",
    "SceneGraphPipeline",
    "SceneObject",
    "__version__",
    "build_rel_dist",
    "build_scene_graph",
    "build_triplet_dist",
    "convert_checkpoint",
    "draw_scene_graph",
    "egtr_open_images",
    "egtr_visual_genome",
    "load_pretrained",
    "object_scores",
    "resolve_model",
    "top_triplets",
]

if TYPE_CHECKING:
    from egtr.builders import (
        egtr_open_images,
        egtr_visual_genome,
        load_pretrained,
        resolve_model,
    )
    from egtr.configuration import EGTRConfig
    from egtr.convert import convert_checkpoint
    from egtr.drawing import draw_scene_graph
    from egtr.modeling import EGTRForSceneGraphGeneration, EGTROutput
    from egtr.pipeline import SceneGraphPipeline
    from egtr.postprocess import build_scene_graph, object_scores, top_triplets
    from egtr.predictor import EGTRPredictor
    from egtr.relation_head import RelationHead, build_rel_dist, build_triplet_dist
    from egtr.scene_graph import Relation, SceneGraph, SceneObject


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'egtr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
