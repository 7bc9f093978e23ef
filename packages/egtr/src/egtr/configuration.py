"""``EGTRConfig``: a Deformable DETR detector configuration plus EGTR's relation settings.

Importing this module registers ``EGTRConfig`` with ``transformers.AutoConfig`` (model type
``egtr``), so ``AutoConfig.from_pretrained`` reads an EGTR model's ``config.json``.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, DeformableDetrConfig

from egtr._labels import VG150_OBJECTS, VG150_PREDICATES
from egtr.postprocess import OBJECT_SCORES
from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["OBJECT_SCORES", "EGTRConfig"]


@strict
class EGTRConfig(DeformableDetrConfig):  # type: ignore[no-untyped-call]
    """Configuration of :class:`~egtr.EGTRForSceneGraphGeneration`.

    It *is* a ``DeformableDetrConfig`` (so the detector is built from it unchanged) with EGTR's
    fields added. Object class names live in ``id2label`` as usual; predicate names in
    ``rel_labels``. The backbone is built offline (random init) unless asked otherwise.

    EGTR fields:
        num_rel_labels: number of predicates ``P``.
        rel_labels: predicate names (``P`` of them); ``None`` means ``predicate_{i}``.
        use_freq_bias: add ``triplet_dist[c_i, c_j]`` to the relation logits.
        use_logit_adjustment / logit_adjustment_tau: post-hoc ``logits -= tau * log(rel_dist)``.
        object_score: ``"softmax"`` (the reference's inference) or ``"sigmoid"`` (its training).
        top_k / graph_constrained: defaults of the scene-graph extraction.
        image_min_size / image_max_size / image_mean / image_std: preprocessing (the mean and
            std default to :data:`egtr.preprocessing.IMAGENET_MEAN` / ``IMAGENET_STD``).

    Raises ``ValueError`` for an ``object_score`` not in :data:`OBJECT_SCORES`, predicate names
    that do not match ``num_rel_labels``, or a two-stage / box-refinement detector.
    """

    model_type = "egtr"

    num_rel_labels: int = 50
    rel_labels: list[str] | None = None
    use_freq_bias: bool = True
    use_logit_adjustment: bool = False
    logit_adjustment_tau: float = 0.3
    object_score: str = "softmax"
    top_k: int = 100
    graph_constrained: bool = True
    image_min_size: int = 800
    image_max_size: int = 1333
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)  # type: ignore[no-untyped-call]
        if self.image_mean is None:
            self.image_mean = list(IMAGENET_MEAN)
        if self.image_std is None:
            self.image_std = list(IMAGENET_STD)
        if self.object_score not in OBJECT_SCORES:
            raise ValueError(
                f"object_score must be one of {OBJECT_SCORES}, got {self.object_score!r}"
            )
        if self.rel_labels is not None and len(self.rel_labels) != self.num_rel_labels:
            raise ValueError(
                f"rel_labels has {len(self.rel_labels)} names but num_rel_labels={self.num_rel_labels}"
            )
        if self.two_stage or self.with_box_refine:
            raise ValueError("EGTR uses single-stage Deformable DETR without box refinement")

    @property
    def object_labels(self) -> list[str]:
        """Object class names, index = class id."""
        id2label: dict[Any, str] = dict(self.id2label or {})
        return [str(id2label.get(i, f"class_{i}")) for i in range(self.num_object_labels)]

    @property
    def num_object_labels(self) -> int:
        """Number of object classes ``C``."""
        return len(self.id2label or {})

    @property
    def predicate_labels(self) -> list[str]:
        """Predicate names, index = predicate id."""
        if self.rel_labels is not None:
            return list(self.rel_labels)
        return [f"predicate_{i}" for i in range(self.num_rel_labels)]

    @classmethod
    def visual_genome(cls, **overrides: Any) -> EGTRConfig:
        """The paper's Visual Genome (VG150) setting: 150 objects, 50 predicates, 200 queries."""
        kwargs: dict[str, Any] = {
            "id2label": dict(enumerate(VG150_OBJECTS)),
            "num_rel_labels": len(VG150_PREDICATES),
            "rel_labels": list(VG150_PREDICATES),
            **_paper_detector(),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def open_images(cls, **overrides: Any) -> EGTRConfig:
        """The paper's Open Images V6 setting: 601 objects, 30 predicates, 200 queries.

        Names default to ``class_{i}`` / ``predicate_{i}``; pass ``id2label`` and ``rel_labels``
        from the data set's ``categories_dict.json`` (or convert a released checkpoint).
        """
        kwargs: dict[str, Any] = {
            "id2label": {i: f"class_{i}" for i in range(601)},
            "num_rel_labels": 30,
            **_paper_detector(),
        }
        kwargs.update(overrides)
        return cls(**kwargs)


def _paper_detector() -> dict[str, Any]:
    """Detector settings shared by the paper's VG and OI models (ResNet-50, 4 levels, d 256)."""
    return {
        "backbone": "resnet50",
        "use_timm_backbone": True,
        "num_feature_levels": 4,
        "d_model": 256,
        "encoder_ffn_dim": 1024,
        "decoder_ffn_dim": 1024,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_n_points": 4,
        "decoder_n_points": 4,
        "num_queries": 200,
        "two_stage": False,
        "with_box_refine": False,
    }


AutoConfig.register(EGTRConfig.model_type, EGTRConfig)
