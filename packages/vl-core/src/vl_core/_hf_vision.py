"""The pooled image features of a transformers CLIP vision tower, with less work than its forward.

``CLIPModel.vision_model(pixel_values).pooler_output`` computes every token of every layer, and
pools only the class token after the last one. This module computes the same value with two exact
savings:

- **The last layer runs its class token only.** Its keys and values still come from every token,
  but the query, the attention output, the residual and the MLP are computed for the class token
  alone. Nothing else of the last layer reaches the pooled output (each token's MLP and residual
  are per token), so the value is unchanged. That saves most of one layer of the tower.
- **Fused attention.** ``torch.nn.functional.scaled_dot_product_attention`` replaces the eager
  product, softmax and product (the probabilities of the image tower are never read here). It
  computes the same function; only the rounding differs (within 1e-6 relative in fp32 in the
  tests).

Two more change only how memory is used, not what is computed:

- **The patch embedding as one matrix product.** The embedding is a convolution whose stride is
  its kernel size: each patch's pixels times the kernel. Cutting the image into its patches and
  multiplying by the kernel viewed as a matrix computes the same sums (rounding aside), and at
  ViT-B/32's sizes on a CPU takes about half the time of the convolution.
- **QuickGELU in place.** The MLP's activation ``h * sigmoid(1.702 * h)`` is written into the
  buffer of ``h`` when no gradient is recorded: the same operations in the same order (bit for
  bit), with one fewer activation-sized buffer per layer (on a CPU at one image, these buffers
  cost more in memory traffic than the arithmetic on them).

The other submodules (layer norms, projections, linear layers) are called as they are, so their
weights, dtypes and devices are the model's. The fast path is taken only where it
computes the same thing as the model's forward: a model in eval mode (or without attention
dropout), with the CLIP module layout, and with no hooks on the tower or any of its submodules
(a hook expects the module's own forward to run). Otherwise :func:`pooled_image_features` runs the
model's forward.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vl_core.overlap import claim_threads

_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj")
_LAYER_PARTS = ("self_attn", "layer_norm1", "mlp", "layer_norm2")
_TOWER_PARTS = ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")


def fast_path_applies(vision: nn.Module) -> bool:
    """Whether :func:`pooled_image_features` can skip the model's forward for ``vision`` (an HF
    ``CLIPVisionModel``/``CLIPVisionTransformer``): the CLIP layout, no dropout in effect, no
    hooks anywhere in the tower, and no global module hooks."""
    if not all(hasattr(vision, name) for name in _TOWER_PARTS):
        return False
    layers = getattr(vision.encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in cast(Any, layers):
        if not all(hasattr(layer, name) for name in _LAYER_PARTS):
            return False
        attention: Any = layer.self_attn
        if not all(isinstance(getattr(attention, n, None), nn.Linear) for n in _ATTENTION_PARTS):
            return False
        if not hasattr(attention, "num_heads") or not hasattr(attention, "scale"):
            return False
        if attention.training and float(getattr(attention, "dropout", 0.0) or 0.0) > 0:
            return False
    if _has_global_hooks():
        return False
    return not any(_has_hooks(module) for module in vision.modules())


def pooled_image_features(vision: nn.Module, pixels: Tensor) -> Tensor:
    """``vision(pixel_values=pixels).pooler_output``, computed as the module docstring says when
    :func:`fast_path_applies`, else by the model's own forward."""
    if not fast_path_applies(vision):
        return cast(Tensor, vision(pixel_values=pixels).pooler_output)
    tower = cast(Any, vision)
    hidden = tower.pre_layrnorm(_embed(tower.embeddings, pixels))
    *layers, last = tower.encoder.layers
    for layer in layers:
        claim_threads()  # run beside other work (vl_core.overlap): take freed threads from here on
        hidden = hidden + _attend(layer.self_attn, layer.layer_norm1(hidden), queries=None)
        hidden = hidden + _mlp(layer.mlp, layer.layer_norm2(hidden))
    normed = last.layer_norm1(hidden)
    cls = hidden[:, :1] + _attend(last.self_attn, normed, queries=normed[:, :1])
    cls = cls + _mlp(last.mlp, last.layer_norm2(cls))
    return cast(Tensor, tower.post_layernorm(cls[:, 0]))


def _embed(embeddings: Any, pixels: Tensor) -> Tensor:
    """``embeddings(pixels)`` (class token, patches, positions), the patches by one matrix
    product; the module's own forward where its layout or the image size is not the plain
    CLIP one."""
    conv = getattr(embeddings, "patch_embedding", None)
    size = getattr(embeddings, "image_size", None)
    plain = (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == conv.stride
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(getattr(embeddings, "class_embedding", None), Tensor)
        and isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding)
        and isinstance(getattr(embeddings, "position_ids", None), Tensor)
        and pixels.dim() == 4
        and pixels.shape[1] == getattr(conv, "in_channels", -1)
        and pixels.shape[2] == pixels.shape[3] == size
    )
    if not plain:
        return cast(Tensor, embeddings(pixels))
    assert isinstance(conv, nn.Conv2d)
    patch = conv.kernel_size[0]
    grid = int(pixels.shape[2]) // patch
    if grid * grid + 1 != embeddings.position_ids.shape[-1]:
        return cast(Tensor, embeddings(pixels))
    batch, channels = pixels.shape[0], pixels.shape[1]
    # [B, C, g, p, g, p] -> [B, g, g, C, p, p]: each patch's pixels in the kernel's order
    patches = pixels.to(conv.weight.dtype)[:, :, : grid * patch, : grid * patch]
    patches = patches.reshape(batch, channels, grid, patch, grid, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, -1)
    patch_embeds = F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)
    class_embeds = embeddings.class_embedding.expand(batch, 1, -1)
    tokens = torch.cat([class_embeds, patch_embeds], dim=1)
    return cast(Tensor, tokens + embeddings.position_embedding(embeddings.position_ids))


def _mlp(mlp: Any, states: Tensor) -> Tensor:
    """``mlp(states)``, with QuickGELU computed in place where nothing records gradients."""
    activation: Any = getattr(mlp, "activation_fn", None)
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if (
        type(activation).__name__ != "QuickGELUActivation"
        or not isinstance(fc1, nn.Linear)
        or not isinstance(fc2, nn.Linear)
    ):
        return cast(Tensor, mlp(states))
    hidden = fc1(states)
    if hidden.requires_grad:  # autograd needs the buffer as it was
        return cast(Tensor, fc2(activation(hidden)))
    # QuickGELUActivation's `input * torch.sigmoid(1.702 * input)`: the same operations, with
    # the sigmoid taken in the buffer of the product and the result in the buffer of `hidden`
    hidden.mul_(torch.mul(hidden, 1.702).sigmoid_())
    return cast(Tensor, fc2(hidden))


def _attend(attention: Any, states: Tensor, *, queries: Tensor | None) -> Tensor:
    """CLIP's multi-head self-attention of ``queries`` (default: every row of ``states``) over
    ``states``, through the module's own projections."""
    batch, width = states.shape[0], states.shape[2]
    heads = int(attention.num_heads)
    rows = states if queries is None else queries

    def split(x: Tensor) -> Tensor:
        return x.view(batch, x.shape[1], heads, width // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        split(attention.q_proj(rows)),
        split(attention.k_proj(states)),
        split(attention.v_proj(states)),
        scale=float(attention.scale),
    )
    return cast(
        Tensor, attention.out_proj(out.transpose(1, 2).reshape(batch, rows.shape[1], width))
    )


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


def _has_global_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(bool(getattr(module_mod, name, None)) for name in names)


__all__ = ["fast_path_applies", "pooled_image_features"]
