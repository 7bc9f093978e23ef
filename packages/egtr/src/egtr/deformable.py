"""Fast inference for the Deformable DETR inside EGTR: transformers' numbers, less time.

transformers' ``DeformableDetrModel`` is used as is (its classes, its parameter names); this module
only changes how some of its parts compute at inference (eval mode without autograd), not what
they compute, and no parameter, buffer or ``state_dict`` key (checkpoints load and save as
before):

- multi-scale deformable attention: transformers samples each feature level with its own
  ``grid_sample`` call and stacks the results (``[B*heads, C, queries, levels*points]``) before
  the weighted sum. :func:`multi_scale_deformable_attention` folds the bilinear weights into the
  attention weights and gathers all levels, points and corners of a query in one
  ``embedding_bag`` call (a weighted sum of rows of a zero-padded value table): no per-level
  calls, no stacked intermediate. The sampling locations are computed with transformers' own
  operations, in a layout that avoids slow broadcasts.
- the backbone's frozen batch norms (scale and shift fixed at inference) are folded into the
  convolutions before them (one convolution with scaled weights instead of a convolution and an
  elementwise pass over its output), and the backbone runs in channels-last memory format;
- the feed-forward blocks apply their ReLU in place.

Results equal the plain path to float rounding (the same sums, in another order). Modules are
switched by changing their class to a subclass whose ``forward`` takes the fast path at inference
and calls transformers' ``forward`` otherwise, so training and gradients are unaffected. Install with
:func:`install_fast_inference`, remove with :func:`remove_fast_inference`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DeformableDetrModel
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrConvEncoder,
    DeformableDetrFrozenBatchNorm2d,
    DeformableDetrMLP,
    DeformableDetrMultiscaleDeformableAttention,
)

__all__ = [
    "fast_inference_installed",
    "install_fast_inference",
    "multi_scale_deformable_attention",
    "remove_fast_inference",
]

_FROZEN_BN_EPS = 1e-5
"""The epsilon transformers' ``DeformableDetrFrozenBatchNorm2d`` adds to the running variance."""

_PAD_BEFORE = 1
_PAD_AFTER = 2
"""Zero border of every level in the padded value table: sampling positions are clamped to
``[-1, size]``, so a corner lies in ``[-1, size + 1]``, always inside its own padded level."""


def _inference(module: nn.Module) -> bool:
    """Whether ``module`` takes the fast path: eval mode without autograd (``torch.no_grad`` or
    ``torch.inference_mode``, as :class:`~egtr.EGTRPredictor` runs). Otherwise transformers' code
    runs, so training and gradients are exactly transformers'."""
    return not module.training and not torch.is_grad_enabled()


# --- multi-scale deformable attention ---------------------------------------------------------


def _level_sizes(spatial_shapes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    return [(int(height), int(width)) for height, width in spatial_shapes]


def _padded_value_table(value: Tensor, sizes: list[tuple[int, int]]) -> tuple[Tensor, int]:
    """``value`` ``[B, S, heads, C]`` as the rows of a table ``[B * heads * S_padded, C]``,
    head-major, each level surrounded by a zero border (``_PAD_BEFORE`` before, ``_PAD_AFTER``
    after, in both directions); returns the table and ``S_padded``."""
    batch, _, heads, channels = value.shape
    padded = [
        (height + _PAD_BEFORE + _PAD_AFTER, width + _PAD_BEFORE + _PAD_AFTER)
        for height, width in sizes
    ]
    padded_length = sum(height * width for height, width in padded)
    table = value.new_zeros(batch, heads, padded_length, channels)
    levels = torch.split(value, [height * width for height, width in sizes], dim=1)
    start = 0
    for level, (height, width), (padded_height, padded_width) in zip(
        levels, sizes, padded, strict=True
    ):
        area = padded_height * padded_width
        target = table[:, :, start : start + area].view(
            batch, heads, padded_height, padded_width, channels
        )
        target[:, :, _PAD_BEFORE : _PAD_BEFORE + height, _PAD_BEFORE : _PAD_BEFORE + width].copy_(
            level.view(batch, height, width, heads, channels).permute(0, 3, 1, 2, 4)
        )
        start += area
    return table.view(-1, channels), padded_length


def _per_sample(values: Sequence[float], points: int, **kwargs: Any) -> Tensor:
    """A per-level constant repeated for each point: ``[levels * points]``."""
    return torch.tensor(values, **kwargs).repeat_interleave(points)


def _pixel_corner(location: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For one coordinate (``[bags, levels * points]`` in ``[0, 1]``, overwritten): the lower
    corner's pixel index (as a float) and the bilinear weights of the lower and upper corners.

    The pixel coordinate is computed with grid_sample's own operations on CPU
    (``align_corners=False``): ``grid = 2 * loc - 1``, ``pixel = (grid + 1) * (size / 2) - 0.5``.
    Beyond one pixel outside the map every corner reads zero, so it is clamped to ``[-1, size]``
    (the padded border).
    """
    pixel = location.mul_(2)
    pixel.sub_(1).add_(1).mul_(size / 2).sub_(0.5)
    pixel.clamp_(min=-1.0)
    torch.minimum(pixel, size, out=pixel)
    corner = pixel.floor()
    upper = pixel - corner
    lower = corner.add(1).sub_(pixel)
    return corner, lower, upper


def _check_shapes(
    value: Tensor, sizes: list[tuple[int, int]], batch_queries_heads: tuple[int, int, int]
) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, heads, C], got {tuple(value.shape)}")
    length = value.shape[1]
    if sum(height * width for height, width in sizes) != length:
        raise ValueError(f"spatial_shapes {sizes} do not fit value [B, {length}, ...]")
    batch, _, heads = batch_queries_heads
    if (batch, heads) != (value.shape[0], value.shape[2]):
        raise ValueError(
            f"the samples' batch and heads ({batch}, {heads}) do not fit value {tuple(value.shape)}"
        )


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention: the attention-weighted sum of bilinear samples.

    Inputs as transformers' ``MultiScaleDeformableAttention``: ``value`` ``[B, S, heads, C]`` (the
    levels' feature maps flattened row-major and concatenated, ``S = sum(h * w)``),
    ``spatial_shapes`` the ``(h, w)`` of each level, ``sampling_locations``
    ``[B, Q, heads, levels, points, 2]`` (``x, y`` in ``[0, 1]`` of each level, pixel centres at
    ``(i + 0.5) / size``; positions outside read zeros) and ``attention_weights``
    ``[B, Q, heads, levels, points]``. Returns ``[B, Q, heads * C]`` (head-major channels), equal
    to transformers' ``grid_sample``-based result (bilinear, zero padding, ``align_corners=False``)
    up to float rounding.

    Each sample's four corner weights (bilinear weight times attention weight) and row indices in
    a zero-padded value table are computed first; one ``embedding_bag`` then sums the weighted
    rows of every query and head. Coordinates are computed in at least float32 (float64 input
    stays float64).

    Raises ``ValueError`` when the shapes do not fit together.
    """
    sizes = _level_sizes(spatial_shapes)
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [B, Q, heads, levels, points, 2], "
            f"got {tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be {tuple(sampling_locations.shape[:-1])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    batch, queries, heads, levels, points, _ = sampling_locations.shape
    if len(sizes) != levels:
        raise ValueError(f"{len(sizes)} spatial shapes for {levels} levels")
    _check_shapes(value, sizes, (batch, queries, heads))
    coord_dtype = torch.promote_types(sampling_locations.dtype, torch.float32)
    locations = sampling_locations.reshape(-1, levels * points, 2).to(coord_dtype)
    # fresh contiguous copies: _sample overwrites them
    x = locations[..., 0].contiguous()
    y = locations[..., 1].contiguous()
    return _sample(value, sizes, points, x, y, attention_weights.reshape(-1, levels * points))


def _sample(
    value: Tensor, sizes: list[tuple[int, int]], points: int, x: Tensor, y: Tensor, weights: Tensor
) -> Tensor:
    """The weighted bilinear samples of :func:`multi_scale_deformable_attention` from the sample
    coordinates ``x``, ``y`` (``[bags, levels * points]``, bags ordered ``(b, q, head)``, in the
    coordinate dtype, contiguous; overwritten) and the attention ``weights`` (same shape);
    returns ``[B, Q, heads * C]``."""
    batch, _, heads, channels = value.shape
    bags, samples = x.shape
    queries = bags // (batch * heads)
    device, coord_dtype = value.device, x.dtype
    table, padded_length = _padded_value_table(value, sizes)
    index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    ints: dict[str, Any] = {"dtype": index_dtype, "device": device}

    # per-sample constants [levels * points], contiguous: every operation below broadcasts them
    # over the bags only (broadcasting over an inner dimension of 2 or 4 is slow on CPU)
    widths = [width for _, width in sizes]
    heights = [height for height, _ in sizes]
    padded_widths = [width + _PAD_BEFORE + _PAD_AFTER for width in widths]
    starts = [0]
    for height, padded_width in zip(heights[:-1], padded_widths, strict=False):
        starts.append(starts[-1] + (height + _PAD_BEFORE + _PAD_AFTER) * padded_width)
    origins = [  # row of pixel (0, 0) of each level within its head's padded sequence
        start + _PAD_BEFORE * padded_width + _PAD_BEFORE
        for start, padded_width in zip(starts, padded_widths, strict=True)
    ]
    width_f = _per_sample(widths, points, dtype=coord_dtype, device=device)
    height_f = _per_sample(heights, points, dtype=coord_dtype, device=device)
    padded_width_i = _per_sample(padded_widths, points, **ints)
    origin_i = _per_sample(origins, points, **ints)

    x, left, right = _pixel_corner(x, width_f)
    y, top, bottom = _pixel_corner(y, height_f)

    weights = weights.to(coord_dtype)
    top.mul_(weights)
    bottom.mul_(weights)
    corner_weights = torch.empty(bags, 4, samples, dtype=value.dtype, device=device)
    torch.mul(top, left, out=corner_weights[:, 0])
    torch.mul(top, right, out=corner_weights[:, 1])
    torch.mul(bottom, left, out=corner_weights[:, 2])
    torch.mul(bottom, right, out=corner_weights[:, 3])

    # row of the lower corner: (b * heads + h) * S_padded + origin + y * padded_width + x
    bag_base = (
        torch.arange(batch, **ints).view(batch, 1, 1) * heads
        + torch.arange(heads, **ints).view(1, 1, heads)
    ) * padded_length  # [B, 1, heads]: bags are (b, q, h)
    rows = y.to(index_dtype).mul_(padded_width_i).add_(x.to(index_dtype)).add_(origin_i)
    rows = rows.view(batch, queries, heads, samples).add_(bag_base.unsqueeze(-1))
    rows = rows.view(bags, samples)
    corner_rows = torch.empty(bags, 4, samples, **ints)
    corner_rows[:, 0] = rows
    torch.add(rows, 1, out=corner_rows[:, 1])
    torch.add(rows, padded_width_i, out=corner_rows[:, 2])
    torch.add(corner_rows[:, 2], 1, out=corner_rows[:, 3])
    # only a NaN location (NaN weights too, so a NaN output, as grid_sample gives) can point
    # outside the table; keep even that a valid read
    corner_rows.clamp_(0, table.shape[0] - 1)

    out = F.embedding_bag(
        corner_rows.view(bags, 4 * samples),
        table,
        per_sample_weights=corner_weights.view(bags, 4 * samples),
        mode="sum",
    )
    return out.view(batch, queries, heads * channels)


class _FastDeformableAttention(DeformableDetrMultiscaleDeformableAttention):
    """transformers' multi-scale deformable attention module. In eval mode with 2-D reference
    points its ``forward`` samples through :func:`_sample`; the sampling locations are computed
    with transformers' operations (``reference + offset / size``), elementwise the same, in a
    layout that suits the sampling. Returns ``(output [B, Q, d], attention weights
    [B, Q, heads, levels, points])`` like the original."""

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        reference_points: Tensor | None = None,
        spatial_shapes: Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        if (
            not _inference(self)
            or reference_points is None
            or reference_points.shape[-1] != 2
            or encoder_hidden_states is None
            or spatial_shapes_list is None
        ):
            result: tuple[Tensor, Tensor] = super().forward(
                hidden_states,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                position_embeddings=position_embeddings,
                reference_points=reference_points,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                **kwargs,
            )
            return result
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch, queries, _ = hidden_states.shape
        length = encoder_hidden_states.shape[1]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        sizes = _level_sizes(spatial_shapes_list)
        if len(sizes) != levels:
            raise ValueError(f"{len(sizes)} spatial shapes for {levels} levels")
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(~attention_mask[..., None], 0.0)
        value = value.view(batch, length, heads, self.d_model // heads)
        _check_shapes(value, sizes, (batch, queries, heads))
        offsets = self.sampling_offsets(hidden_states).view(
            batch, queries, heads, levels, points, 2
        )
        weights = F.softmax(
            self.attention_weights(hidden_states).view(batch, queries, heads, levels * points), -1
        )

        # the sampling locations as transformers computes them, reference + offset / (w, h); the
        # references are expanded over the points first, so both operations broadcast over the
        # heads only
        coord_dtype = torch.promote_types(offsets.dtype, torch.float32)
        device = offsets.device
        reference = reference_points.to(coord_dtype).unsqueeze(-2)  # [B, Q, levels, 1, 2]
        reference = reference.expand(batch, queries, levels, points, 2)
        coordinates = []
        for axis, size in ((0, [w for _, w in sizes]), (1, [h for h, _ in sizes])):
            size_t = _per_sample(size, points, dtype=coord_dtype, device=device)
            location = torch.div(offsets[..., axis].to(coord_dtype), size_t.view(levels, points))
            location += reference[..., axis].contiguous().unsqueeze(2)
            coordinates.append(location.view(-1, levels * points))
        output = _sample(
            value, sizes, points, coordinates[0], coordinates[1], weights.view(-1, levels * points)
        )
        output = self.output_proj(output)
        return output, weights.view(batch, queries, heads, levels, points)


# --- feed-forward blocks -----------------------------------------------------------------------


class _InPlaceReluMLP(DeformableDetrMLP):
    """transformers' feed-forward block; in eval mode with a ReLU activation, the ReLU runs in
    place on the first layer's output (dropout is the identity there). Returns the block's output
    like the original."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        if not _inference(self) or type(self.activation_fn) is not nn.ReLU:
            result: Tensor = super().forward(hidden_states)
            return result
        hidden: Tensor = self.fc1(hidden_states)
        output: Tensor = self.fc2(hidden.relu_())
        return output


# --- backbone ----------------------------------------------------------------------------------


class _FoldedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` followed by a frozen batch norm: in eval mode it applies both at once
    (weights scaled, bias shifted; computed per call from the current parameters and buffers, so
    loading new weights needs nothing else). Returns the convolution's output."""

    _egtr_norm: DeformableDetrFrozenBatchNorm2d

    def forward(self, input: Tensor) -> Tensor:
        if not _inference(self):
            plain: Tensor = self._conv_forward(input, self.weight, self.bias)
            return plain
        norm = self._egtr_norm
        scale: Tensor = norm.weight * (norm.running_var + _FROZEN_BN_EPS).rsqrt()
        shift: Tensor = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        weight = self.weight * scale.view(-1, 1, 1, 1)
        if input.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        folded: Tensor = self._conv_forward(input, weight, shift)
        return folded


class _FoldedFrozenBatchNorm2d(DeformableDetrFrozenBatchNorm2d):
    """A frozen batch norm whose scale and shift its convolution applies in eval mode; it then
    returns its input unchanged (in training mode, its normal output)."""

    _egtr_conv: _FoldedConv2d

    def forward(self, x: Tensor) -> Tensor:
        if not _inference(self._egtr_conv):
            result: Tensor = super().forward(x)  # type: ignore[no-untyped-call]
            return result
        return x


class _ChannelsLastConvEncoder(DeformableDetrConvEncoder):
    """transformers' backbone wrapper; in eval mode the backbone gets a channels-last input.
    Returns the ``(feature map, mask)`` pairs like the original."""

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> Any:
        if _inference(self) and pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return super().forward(pixel_values, pixel_mask)


def _sequential_parent(module: nn.Module) -> bool:
    """Whether the children of ``module`` run in their registration order, one into the next,
    so that a convolution registered right before a batch norm feeds it (``nn.Sequential``,
    timm's ``FeatureListNet`` and the ResNets of timm and transformers)."""
    if isinstance(module, nn.Sequential):
        return True
    origin = type(module).__module__
    return origin.startswith(("timm.models.resnet", "transformers.models.resnet")) or (
        type(module).__name__ == "FeatureListNet" and origin.startswith("timm.")
    )


def _fold_batch_norms(backbone: nn.Module) -> int:
    """Switch each (``nn.Conv2d``, frozen batch norm) pair of consecutive children to the folded
    pair; returns the number of pairs."""
    count = 0
    for parent in backbone.modules():
        if not _sequential_parent(parent):
            continue
        children = list(parent.children())
        for conv, norm in itertools.pairwise(children):
            if (
                type(conv) is nn.Conv2d
                and type(norm) is DeformableDetrFrozenBatchNorm2d
                and conv.out_channels == norm.weight.shape[0]
                and conv.padding_mode == "zeros"
            ):
                conv.__class__ = _FoldedConv2d
                norm.__class__ = _FoldedFrozenBatchNorm2d
                conv.__dict__["_egtr_norm"] = norm  # plain attributes: not submodules
                norm.__dict__["_egtr_conv"] = conv
                count += 1
    return count


def _unfold_batch_norms(backbone: nn.Module) -> None:
    for module in backbone.modules():
        plain: type[nn.Module] | None = None
        if type(module) is _FoldedConv2d:
            plain = nn.Conv2d
            del module.__dict__["_egtr_norm"]
        elif type(module) is _FoldedFrozenBatchNorm2d:
            plain = DeformableDetrFrozenBatchNorm2d
            del module.__dict__["_egtr_conv"]
        if plain is not None:
            module.__class__ = plain


# --- switching ---------------------------------------------------------------------------------

_FAST_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    DeformableDetrMultiscaleDeformableAttention: _FastDeformableAttention,
    DeformableDetrMLP: _InPlaceReluMLP,
    DeformableDetrConvEncoder: _ChannelsLastConvEncoder,
}
_PLAIN_CLASSES = {fast: plain for plain, fast in _FAST_CLASSES.items()}


def install_fast_inference(detector: DeformableDetrModel) -> None:
    """Install the fast inference path in ``detector`` (in place; a second call changes nothing).

    Switches the deformable attention to :func:`multi_scale_deformable_attention`'s sampling, the
    feed-forward blocks to an in-place ReLU, folds the backbone's frozen batch norms into its
    convolutions and runs the backbone in channels-last format (see the module docs). Parameters,
    buffers and ``state_dict`` keys stay as they are; training mode runs transformers' code.
    Returns nothing.
    """
    for module in detector.modules():
        fast = _FAST_CLASSES.get(type(module))
        if fast is not None:
            module.__class__ = fast
    _fold_batch_norms(detector.backbone)


def remove_fast_inference(detector: DeformableDetrModel) -> None:
    """Put transformers' own computation back everywhere :func:`install_fast_inference` changed
    it (in place; returns nothing)."""
    for module in detector.modules():
        plain = _PLAIN_CLASSES.get(type(module))
        if plain is not None:
            module.__class__ = plain
    _unfold_batch_norms(detector.backbone)


def fast_inference_installed(detector: DeformableDetrModel) -> bool:
    """Whether :func:`install_fast_inference` is in effect in ``detector``."""
    return any(type(module) in _PLAIN_CLASSES for module in detector.modules())
