"""``EGTRForSceneGraphGeneration``: Deformable DETR (from transformers) plus EGTR's relation head.

The detector is ``transformers.DeformableDetrModel`` used as is; the decoder self-attention queries
and keys EGTR needs are recorded with forward hooks on each decoder layer's ``q_proj``/``k_proj``
(:class:`vl_core.capture.Capture`), so no copy of the detector is vendored.

Importing this module registers the model with ``transformers.AutoModel`` (and, through
:mod:`egtr.configuration`, the config with ``AutoConfig``): after ``import egtr.modeling``,
``AutoModel.from_pretrained`` opens EGTR model directories and hub ids like any transformers model.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, DeformableDetrModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils.generic import ModelOutput

from egtr.configuration import EGTRConfig
from egtr.deformable import fast_inference_installed, install_fast_inference, remove_fast_inference
from egtr.relation_head import PredictionMLP, RelationHead, literal_relation_logits
from vl_core.capture import Capture

_PRIOR_PROB = 0.01

RELATION_HEAD_IMPLS = ("factorised", "literal")

_POWER_OF_TWO_HEADS_WARNING = (
    r"You'd better set embed_dim \(d_model\) in DeformableDetrMultiscaleDeformableAttention"
)
"""transformers' advice (a ``UserWarning``) for a per-head width that is not a power of 2."""


@dataclass
class EGTROutput(ModelOutput):
    """Outputs of :class:`EGTRForSceneGraphGeneration`.

    logits: class logits ``[B, N, C]`` (sigmoid-focal trained; no "no-object" column).
    pred_boxes: boxes ``[B, N, 4]``, ``(cx, cy, w, h)`` normalised to the unpadded image.
    pred_rel: relation probabilities ``sigmoid(logits)`` ``[B, N, N, P]`` (subject row, object column).
    pred_connectivity: connectivity probabilities ``[B, N, N]``.
    rel_logits / connectivity_logits: the same before the sigmoid (bias and adjustment included).
    last_hidden_state: the decoder output ``[B, N, d]``.
    decoder_queries / decoder_keys: captured self-attention ``q_proj``/``k_proj`` outputs of each
        decoder layer, ``[B, L, N, d]`` (unscaled, heads concatenated).
    auxiliary_logits / auxiliary_pred_boxes: class logits ``[B, L-1, N, C]`` and boxes
        ``[B, L-1, N, 4]`` of decoder layers ``0..L-2`` through the shared heads (only with
        ``output_auxiliary=True``; training's auxiliary losses).
    """

    logits: Tensor | None = None
    pred_boxes: Tensor | None = None
    pred_rel: Tensor | None = None
    pred_connectivity: Tensor | None = None
    rel_logits: Tensor | None = None
    connectivity_logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    decoder_queries: Tensor | None = None
    decoder_keys: Tensor | None = None
    auxiliary_logits: Tensor | None = None
    auxiliary_pred_boxes: Tensor | None = None


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (as Deformable DETR); returns a
    tensor of the same shape."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class EGTRPreTrainedModel(PreTrainedModel):  # type: ignore[no-untyped-call]
    """Weight initialisation and loading glue shared by EGTR models."""

    config_class = EGTRConfig
    config: EGTRConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    _keys_to_ignore_on_load_unexpected = [r"\.num_batches_tracked$"]  # noqa: RUF012

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # type: ignore[no-untyped-call]
        if isinstance(module, EGTRForSceneGraphGeneration):
            bias_value = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
            init.constant_(module.class_embed.bias, bias_value)
            last = module.bbox_embed.layers[-1]
            assert isinstance(last, nn.Linear)
            assert last.bias is not None
            init.zeros_(last.weight)
            init.copy_(last.bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
            init.zeros_(module.triplet_dist)
            init.constant_(module.rel_dist, 1.0 / module.config.num_rel_labels)


class EGTRForSceneGraphGeneration(EGTRPreTrainedModel):  # type: ignore[no-untyped-call]
    """EGTR: objects from Deformable DETR, relations from its decoder self-attention.

    ``forward(pixel_values, pixel_mask)`` returns an :class:`EGTROutput`. Buffers:
    ``triplet_dist`` ``[C+1, C+1, P]`` (frequency bias, see :func:`egtr.build_triplet_dist`) and
    ``rel_dist`` ``[P]`` (predicate marginal for the optional logit adjustment).
    """

    def __init__(self, config: EGTRConfig) -> None:
        super().__init__(config)
        d = config.d_model
        with warnings.catch_warnings():
            # Known harmless: the advice concerns the speed of the authors' CUDA kernel, which
            # this model never uses (transformers' pure-PyTorch deformable attention runs for any
            # head width). Small models (e.g. d_model 96 with 4 heads) would print it on every
            # load. Only this one message is filtered.
            warnings.filterwarnings(
                "ignore", message=_POWER_OF_TWO_HEADS_WARNING, category=UserWarning
            )
            self.model = DeformableDetrModel(config)
        self.class_embed = nn.Linear(d, config.num_object_labels)
        self.bbox_embed = PredictionMLP(d, d, 4, 3)
        self.relation_head = RelationHead(d, config.decoder_layers, config.num_rel_labels)
        c1 = config.num_object_labels + 1
        self.register_buffer("triplet_dist", torch.zeros(c1, c1, config.num_rel_labels))
        self.register_buffer("rel_dist", torch.full((config.num_rel_labels,), 1.0))
        self.post_init()  # type: ignore[no-untyped-call]
        install_fast_inference(self.model)

    triplet_dist: Tensor
    rel_dist: Tensor

    @property
    def fast_inference(self) -> bool:
        """Whether the detector uses :mod:`egtr.deformable`'s fast inference path in eval mode
        (the default; same outputs as transformers' own computation to float rounding)."""
        return fast_inference_installed(self.model)

    def set_fast_inference(self, enabled: bool) -> None:
        """Switch :mod:`egtr.deformable`'s fast inference path on (the default) or off (then the
        detector runs transformers' ``DeformableDetrModel`` code unchanged). Parameters and
        ``state_dict`` keys are the same either way; training mode (and any forward under
        autograd) always runs transformers' code. Returns nothing."""
        if enabled:
            install_fast_inference(self.model)
        else:
            remove_fast_inference(self.model)

    def compile_for_inference(self, **options: Any) -> None:
        """``torch.compile`` the parts where compiling pays, in place; returns nothing.

        Only the relation head is compiled (``nn.Module.compile``: parameters, ``state_dict`` keys
        and outputs stay the same, to float rounding). Measured on 2 CPU cores: the head's
        pairwise MLPs fuse, about 10% of the whole model at 320x512, and the first call compiles
        for several seconds (again for each new batch size). Compiling the backbone or the
        encoder layers gained nothing there (the fast inference path already does their work),
        so they stay eager. ``options`` go to ``torch.compile`` (e.g. ``mode``). Needs a working
        ``torch.compile`` (on CPU a C++ compiler); its errors surface at the first forward.
        """
        self.relation_head.compile(**options)

    def capture_names(self) -> tuple[list[str], list[str]]:
        """``(query names, key names)``: qualified names of each decoder layer's self-attention
        ``q_proj`` and ``k_proj``."""
        layers = range(self.config.decoder_layers)
        queries = [f"model.decoder.layers.{i}.self_attn.q_proj" for i in layers]
        keys = [f"model.decoder.layers.{i}.self_attn.k_proj" for i in layers]
        return queries, keys

    def set_frequency_statistics(
        self, triplet_dist: Tensor, rel_dist: Tensor | None = None
    ) -> None:
        """Install a frequency-bias table (and optionally the predicate marginal).

        Raises ``ValueError`` when ``triplet_dist`` does not have the model's shape.
        """
        if triplet_dist.shape != self.triplet_dist.shape:
            raise ValueError(
                f"triplet_dist must have shape {tuple(self.triplet_dist.shape)}, "
                f"got {tuple(triplet_dist.shape)}"
            )
        with torch.no_grad():
            self.triplet_dist.copy_(triplet_dist)
            if rel_dist is not None:
                self.rel_dist.copy_(rel_dist)

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        *,
        relation_head_impl: str = "factorised",
        detector_only: bool = False,
        output_auxiliary: bool = False,
        **kwargs: Any,
    ) -> EGTROutput:
        """Detect objects and relations.

        ``detector_only=True`` skips the relation head (relation outputs are ``None``; detector
        pre-training). ``output_auxiliary=True`` adds the per-layer ``auxiliary_*`` outputs.

        ``relation_head_impl="literal"`` builds the ``[B, N, N, L+1, 2d]`` pair tensor
        (:func:`~egtr.relation_head.literal_relation_logits`) instead of the factorised head:
        same numbers, far more memory; for tests and benchmarks only.

        Returns an :class:`EGTROutput`; raises ``ValueError`` for an unknown
        ``relation_head_impl``.
        """
        if relation_head_impl not in RELATION_HEAD_IMPLS:
            raise ValueError(
                f"relation_head_impl must be one of {RELATION_HEAD_IMPLS}, got {relation_head_impl!r}"
            )
        query_names, key_names = self.capture_names()
        with Capture(self, outputs=[*query_names, *key_names]) as cap:
            outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, **kwargs)
            queries = torch.stack([cap.outputs[n] for n in query_names], dim=1)
            keys = torch.stack([cap.outputs[n] for n in key_names], dim=1)
        hidden = outputs.last_hidden_state  # [B, N, d]

        logits = self.class_embed(hidden)
        reference = outputs.intermediate_reference_points[:, -1]  # [B, N, 2]
        boxes = self._predict_boxes(hidden, reference)
        aux_logits = aux_boxes = None
        if output_auxiliary:  # no box refinement: every layer shares the reference points
            intermediate = outputs.intermediate_hidden_states[:, :-1]  # [B, L-1, N, d]
            aux_logits = self.class_embed(intermediate)
            aux_boxes = self._predict_boxes(intermediate, reference.unsqueeze(1))
        if detector_only:
            return EGTROutput(
                logits=logits,
                pred_boxes=boxes,
                last_hidden_state=hidden,
                auxiliary_logits=aux_logits,
                auxiliary_pred_boxes=aux_boxes,
            )

        if relation_head_impl == "literal":
            rel_logits, conn_logits = literal_relation_logits(
                self.relation_head, queries, keys, hidden
            )
        else:
            rel_logits, conn_logits = self.relation_head(queries, keys, hidden)
        if self.config.use_freq_bias:
            rel_logits = rel_logits + self.frequency_bias(logits)
        if self.config.use_logit_adjustment:
            tau = self.config.logit_adjustment_tau
            rel_logits = rel_logits - tau * torch.log(self.rel_dist.to(rel_logits.dtype))
        return EGTROutput(
            logits=logits,
            pred_boxes=boxes,
            pred_rel=torch.sigmoid(rel_logits),
            pred_connectivity=torch.sigmoid(conn_logits),
            rel_logits=rel_logits,
            connectivity_logits=conn_logits,
            last_hidden_state=hidden,
            decoder_queries=queries,
            decoder_keys=keys,
            auxiliary_logits=aux_logits,
            auxiliary_pred_boxes=aux_boxes,
        )

    def _predict_boxes(self, hidden: Tensor, reference: Tensor) -> Tensor:
        """``sigmoid(bbox_embed(hidden) + [inverse_sigmoid(reference), 0, 0])`` (cxcywh)."""
        reference = reference.expand(*hidden.shape[:-1], reference.shape[-1])
        offset = torch.cat([inverse_sigmoid(reference), torch.zeros_like(reference)], dim=-1)
        return torch.sigmoid(self.bbox_embed(hidden) + offset)

    def frequency_bias(self, class_logits: Tensor) -> Tensor:
        """``triplet_dist[c_i, c_j]`` for every pair, ``c = argmax`` of the class logits: returns
        ``[B, N, N, P]`` in the logits' dtype."""
        classes = class_logits.argmax(dim=-1)  # [B, N]
        bias = self.triplet_dist[classes.unsqueeze(-1), classes.unsqueeze(-2)]  # [B, N, N, P]
        return bias.to(class_logits.dtype)


AutoModel.register(EGTRConfig, EGTRForSceneGraphGeneration)
