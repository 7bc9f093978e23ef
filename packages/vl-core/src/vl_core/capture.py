"""Capture declared as data: submodule outputs and attention probabilities inside the graph.

``Capture`` is a context manager. While it is open, forward hooks record the outputs of the named
submodules, and the attention probabilities of the named attention modules are recorded as the very
tensors the model multiplies with its values — so they are part of the autograd graph and gradients
with respect to them are exact. Leaving the context removes every hook and puts back every module it
swapped, so the model is exactly as before.

Supported attention modules:
- transformers attention modules that return ``(output, weights)`` (e.g. ``CLIPAttention``) when the
  model runs with ``attn_implementation="eager"`` (sdpa/flash return no weights);
- ``torch.nn.MultiheadAttention`` (as used by open_clip with ``need_weights=False``): it is swapped
  for :class:`ProbedMultiheadAttention`, a literal re-implementation that shares its parameters; its
  output carries the original module's value bit for bit and the literal computation's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class CaptureError(RuntimeError):
    """A module asked for cannot be captured (missing, unsupported, or returns no weights)."""


class ProbedMultiheadAttention(nn.Module):
    """Stand-in for an ``nn.MultiheadAttention`` that exposes its post-softmax probabilities.

    It holds the original module (same parameters) and computes the attention literally:
    ``softmax(q k^T / sqrt(d) + mask) v``; ``last_probs`` is ``[batch, heads, q_len, k_len]``.
    PyTorch's own kernel (SDPA) rounds differently, and over a few layers the literal result drifts
    from it by a few ulps. So the value returned is the original module's output, bit for bit, while
    the gradient is the literal computation's: ``original.detach() + (literal - literal.detach())``.
    The model's outputs are therefore unchanged, and gradients w.r.t. ``last_probs`` are exact
    gradients of the attention (at an input equal to the original's to float rounding). In training
    mode with dropout the two could not agree (different random masks): the literal output is used.
    """

    def __init__(self, inner: nn.MultiheadAttention) -> None:
        super().__init__()
        if not inner._qkv_same_embed_dim:
            raise CaptureError("MultiheadAttention with kdim/vdim != embed_dim is not supported")
        self.inner = inner
        self.last_probs: Tensor | None = None

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``nn.MultiheadAttention``'s ``(output, weights)``: the wrapped module's own output
        value (bit for bit) carrying the literal computation's gradient; the probabilities are
        kept in ``last_probs``."""
        mha = self.inner
        literal, probs = self._literal(query, key, value, key_padding_mask, attn_mask, is_causal)
        self.last_probs = probs
        if self.training and mha.dropout > 0:
            out = literal
        else:
            # Same call, same grad mode as without the probe, so PyTorch picks the same kernel.
            original, _ = mha(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=False,
                attn_mask=attn_mask,
                is_causal=is_causal,
            )
            out = original.detach() + (literal - literal.detach())
        weights: Tensor | None = None
        if need_weights:
            weights = probs.mean(dim=1) if average_attn_weights else probs
        return out, weights

    def _literal(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor]:
        """``(output, probabilities)`` of the attention, computed from its definition."""
        mha = self.inner
        if not mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        batch, q_len, embed = query.shape
        k_len = key.shape[1]
        heads = mha.num_heads
        head_dim = embed // heads
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q: Tensor | None = None
        b_k: Tensor | None = None
        b_v: Tensor | None = None
        if mha.in_proj_bias is not None:
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(batch, q_len, heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, k_len, heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, k_len, heads, head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
        scores = scores + _additive_mask(attn_mask, key_padding_mask, is_causal, scores)
        probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        dropped = F.dropout(probs, p=mha.dropout, training=self.training)
        out = torch.matmul(dropped, v).transpose(1, 2).reshape(batch, q_len, embed)
        out = mha.out_proj(out)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        return out, probs


def _additive_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool, scores: Tensor
) -> Tensor:
    """All masks of ``nn.MultiheadAttention`` semantics as one additive float mask."""
    batch, heads, q_len, k_len = scores.shape
    total = torch.zeros((), dtype=scores.dtype, device=scores.device)
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    if attn_mask is not None:
        mask = attn_mask
        if mask.dtype == torch.bool:
            mask = torch.where(
                mask, neg_inf, torch.zeros((), dtype=scores.dtype, device=mask.device)
            )
        mask = mask.to(scores.dtype)
        if mask.dim() == 3:  # [batch * heads, q, k]
            mask = mask.view(batch, heads, q_len, k_len)
        total = total + mask
    elif is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu(1)
        total = total + torch.where(causal, neg_inf, torch.zeros((), dtype=scores.dtype))
    if key_padding_mask is not None:
        pad = key_padding_mask
        if pad.dtype == torch.bool:
            pad = torch.where(pad, neg_inf, torch.zeros((), dtype=scores.dtype, device=pad.device))
        total = total + pad.to(scores.dtype).view(batch, 1, 1, k_len)
    return total


class Capture:
    """Record submodule outputs and attention probabilities while the context is open.

    ``outputs``: qualified module names (as in ``model.named_modules()``) whose forward outputs are
    kept (the first element when a module returns a tuple). ``attentions``: qualified names of
    attention modules whose post-softmax probabilities ``[batch, heads, q, k]`` are kept, inside the
    autograd graph. After each forward, read ``capture.outputs[name]`` / ``capture.attentions[name]``
    (the latest call of that module).
    """

    def __init__(
        self, model: nn.Module, *, outputs: Iterable[str] = (), attentions: Iterable[str] = ()
    ) -> None:
        self.model = model
        self.output_names = tuple(outputs)
        self.attention_names = tuple(attentions)
        self.outputs: dict[str, Tensor] = {}
        self.attentions: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        self._probes: dict[str, ProbedMultiheadAttention] = {}
        modules = dict(model.named_modules())
        missing = [n for n in (*self.output_names, *self.attention_names) if n not in modules]
        if missing:
            raise CaptureError(f"no submodule named {missing} in {type(model).__name__}")
        self._modules = modules

    def __enter__(self) -> Capture:
        if self._handles or self._swapped:
            raise CaptureError("this Capture is already active")
        try:
            for name in self.attention_names:
                self._attach_attention(name)
            for name in self.output_names:  # after swapping: a swapped module's probe is hooked
                module = self._probes[name] if name in self._probes else self._modules[name]
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def clear(self) -> None:
        """Forget recorded tensors (keeps hooks in place)."""
        self.outputs.clear()
        self.attentions.clear()

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def _attach_attention(self, name: str) -> None:
        module = self._modules[name]
        if isinstance(module, nn.MultiheadAttention):
            parent_name, _, attr = name.rpartition(".")
            parent = self._modules[parent_name] if parent_name else self.model
            probe = ProbedMultiheadAttention(module)
            setattr(parent, attr, probe)
            self._swapped.append((parent, attr, module))
            self._probes[name] = probe
            self._handles.append(probe.register_forward_hook(self._probe_hook(name, probe)))
            return
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if implementation not in (None, "eager"):
            raise CaptureError(
                f"attention module {name!r} runs with attn_implementation={implementation!r}, "
                "which returns no attention probabilities; load the model with "
                "attn_implementation='eager'"
            )
        self._handles.append(module.register_forward_hook(self._weights_hook(name)))

    def _probe_hook(self, name: str, probe: ProbedMultiheadAttention) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            assert probe.last_probs is not None
            self.attentions[name] = probe.last_probs
            probe.last_probs = None

        return hook

    def _weights_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, Tensor):
                raise CaptureError(
                    f"attention module {name!r} ({type(module).__name__}) returned no attention "
                    "weights; load the model with attn_implementation='eager'"
                )
            self.attentions[name] = weights

        return hook

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for parent, attr, original in reversed(self._swapped):
            setattr(parent, attr, original)
        self._swapped.clear()
        self._probes.clear()
