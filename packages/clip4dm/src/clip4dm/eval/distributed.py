"""Sharded runs under ``torchrun``: rank/world from the environment, a gloo group for coordination.

Only small Python objects travel between ranks (done ids, failures, model identity), so the group
always uses the gloo backend, on CPU and GPU machines alike; each rank puts its model on
``cuda:<local rank>`` when CUDA is used. Ranks share the output directory (one machine, or a
shared filesystem).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from clip4dm.eval.errors import EvalError

__all__ = ["Dist", "device_for_rank", "process_group"]

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order (a barrier too)."""
        if not self.sharded:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.sharded:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def run_on_main(self, function: Callable[[], T]) -> T:
        """``function()`` on rank 0, its result on every rank; if it raises, the other ranks raise
        an `EvalError` (so no rank waits forever for a rank that gave up)."""
        if not self.sharded:
            return function()
        outcome: tuple[bool, Any] = (True, None)
        failure: Exception | None = None
        if self.is_main:
            try:
                outcome = (True, function())
            except Exception as exc:  # tell the other ranks before raising it here
                failure = exc
                message = str(exc) if isinstance(exc, EvalError) else f"rank 0 failed: {exc!r}"
                outcome = (False, message)
        ok, value = self.broadcast(outcome)
        if failure is not None:
            raise failure
        if not ok:
            raise EvalError(str(value))
        return value  # type: ignore[no-any-return]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise EvalError(f"environment variable {name}={raw!r} is not an integer") from None


def from_environment() -> Dist:
    """Rank, world size and local rank as ``torchrun`` sets them (1 process when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise EvalError(f"inconsistent RANK={rank} / WORLD_SIZE={world}")
    return Dist(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank))


@contextmanager
def process_group(timeout_minutes: float = 60.0) -> Iterator[Dist]:
    """The run's `Dist`; joins (and finally leaves) a gloo group when started by ``torchrun``."""
    info = from_environment()
    owned = False
    if info.sharded and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise EvalError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset: use torchrun")
        dist.init_process_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))
        owned = True
    try:
        yield info
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def device_for_rank(device: str, info: Dist) -> str:
    """``device`` with a sharded CUDA run spread over the GPUs (``cuda:<local rank>``)."""
    if not info.sharded or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    return f"cuda:{info.local_rank % torch.cuda.device_count()}"
