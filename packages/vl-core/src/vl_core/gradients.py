"""Gradients of batched scores with respect to activations, with autograd only where needed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


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


class PartialAutograd:
    """Reusable :func:`partial_autograd`: record autograd only from ``start`` onwards.

    The parameters of ``model`` are listed once, at construction (a model's parameter objects
    stay the same through ``.to()`` and ``load_state_dict``), so entering the context costs a
    hook registration and a flag flip per trainable parameter instead of a walk over the whole
    module tree. Use it where the same model is attributed call after call (e.g. one per
    detector). Inside the context, every parameter has ``requires_grad=False`` and grad mode is
    on; the first tensor entering ``start`` becomes a fresh leaf that requires grad. Flags are
    restored on exit. One context at a time: entering an active one raises ``RuntimeError``.

    Raises ``TypeError`` (at the forward) when ``start`` receives no tensor input.
    """

    def __init__(self, model: nn.Module, start: nn.Module) -> None:
        self.model = model
        self.start = start
        self._parameters = tuple(model.parameters())
        self._handle: RemovableHandle | None = None
        self._trainable: list[nn.Parameter] = []
        self._grad_mode = False

    def __enter__(self) -> PartialAutograd:
        if self._handle is not None:
            raise RuntimeError("this PartialAutograd is already active")
        self._trainable = [p for p in self._parameters if p.requires_grad]
        self._handle = self.start.register_forward_pre_hook(_fresh_leaf_input, with_kwargs=True)
        for param in self._trainable:
            param.requires_grad_(False)
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        torch.set_grad_enabled(self._grad_mode)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for param in self._trainable:
            param.requires_grad_(True)
        self._trainable = []


def _fresh_leaf_input(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook: the module's first tensor input, detached, as a leaf requiring grad."""
    if args and isinstance(args[0], Tensor):
        return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), Tensor):
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
        return args, kwargs
    raise TypeError(f"partial_autograd: no tensor input found for {type(module).__name__}")


@contextmanager
def partial_autograd(model: nn.Module, start: nn.Module) -> Iterator[None]:
    """Record autograd only from ``start`` (a submodule) onwards; no parameter gradients.

    Inside the context, every parameter of ``model`` has ``requires_grad=False`` and grad mode is
    on; the first tensor entering ``start`` becomes a fresh leaf that requires grad. So modules
    before ``start`` build no graph (they cost a plain forward), and the graph from ``start`` on
    holds only activations. Parameters' ``requires_grad`` flags are restored on exit. (To enter
    it many times on the same model, build a `PartialAutograd` once.)

    Raises ``TypeError`` (at the forward) when ``start`` receives no tensor input.
    """
    with PartialAutograd(model, start):
        yield
