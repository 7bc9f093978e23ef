"""Gradients of batched scores with respect to activations, with autograd only where needed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def batched_grad(scores: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """d scores[b] / d inputs[i][b] for every sample ``b``, in ONE backward pass.

    Exact per-sample gradients provided each ``scores[b]`` depends only on sample ``b``'s slice
    of every input (true for models without cross-sample interaction, e.g. CLIP in eval mode): then
    the gradient of ``scores.sum()`` restricted to slice ``b`` equals the gradient of ``scores[b]``.
    Returns one gradient per input, shaped like it (zeros where an input is unused).

    Raises ``ValueError`` when ``scores`` is not a vector or an input's batch size differs.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be a vector [batch], got shape {tuple(scores.shape)}")
    for i, tensor in enumerate(inputs):
        if tensor.shape[0] != scores.shape[0]:
            raise ValueError(f"inputs[{i}] has batch {tensor.shape[0]}, scores {scores.shape[0]}")
    grads = torch.autograd.grad(scores.sum(), list(inputs), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


@contextmanager
def partial_autograd(model: nn.Module, start: nn.Module) -> Iterator[None]:
    """Record autograd only from ``start`` (a submodule) onwards; no parameter gradients.

    Inside the context, every parameter of ``model`` has ``requires_grad=False`` and grad mode is
    on; the first tensor entering ``start`` becomes a fresh leaf that requires grad. So modules
    before ``start`` build no graph (they cost a plain forward), and the graph from ``start`` on
    holds only activations. Parameters' ``requires_grad`` flags are restored on exit.

    Raises ``TypeError`` (at the forward) when ``start`` receives no tensor input.
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], Tensor):
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), Tensor):
            kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
            return args, kwargs
        raise TypeError(f"partial_autograd: no tensor input found for {type(module).__name__}")

    handle = start.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for param, _ in saved:
            param.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        handle.remove()
        for param, flag in saved:
            param.requires_grad_(flag)
