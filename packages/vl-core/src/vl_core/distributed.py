"""Runs under ``torchrun``: this process's rank, the process group, sharding and collectives.

One helper for inference runs (``clip4dm eval``, ``egtr predict``/``eval``) and training
(``egtr train``). The rank, world size and local rank come from the environment that ``torchrun``
sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; unset means one process). When ``LOCAL_RANK`` is
unset it defaults to ``RANK`` (one node). Inputs are sharded round-robin from the input order
(`Dist.shard`), so which rank computes an item never depends on what an earlier run finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

__all__ = [
    "Dist",
    "DistributedError",
    "device_for_rank",
    "from_environment",
    "process_group",
    "setup_process_group",
    "teardown_process_group",
]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """The launch environment is inconsistent, or another rank failed."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that merges outputs and prints results)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    def _active(self) -> bool:
        return self.sharded and torch_dist.is_available() and torch_dist.is_initialized()

    def shard(self, count: int) -> Sequence[int]:
        """The input positions this rank takes: every ``world_size``-th from ``rank``."""
        return range(self.rank, count, self.world_size)

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self._active():
            torch_dist.barrier()

    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object), in rank order; a barrier too."""
        if not self._active():
            return [value]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self._active():
            return value
        box: list[Any] = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over all ranks (a new tensor; ``values`` itself in one process)."""
        if not self._active():
            return values
        total = values.clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    def run_on_main(
        self, function: Callable[[], T], error: type[Exception] = DistributedError
    ) -> T:
        """``function()`` on rank 0 and its result on every rank.

        If it raises on rank 0, the exception is raised there and the other ranks raise ``error``
        with its message, so no rank waits forever for a rank that gave up.
        """
        if not self._active():
            return function()
        outcome: tuple[bool, Any] = (True, None)
        failure: Exception | None = None
        if self.is_main:
            try:
                outcome = (True, function())
            except Exception as exc:  # tell the other ranks before raising it here
                failure = exc
                outcome = (False, str(exc) or f"rank 0 failed: {exc!r}")
        ok, value = self.broadcast(outcome)
        if failure is not None:
            raise failure
        if not ok:
            raise error(str(value))
        return value  # type: ignore[no-any-return]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def from_environment() -> Dist:
    """Rank, world size and local rank as ``torchrun`` sets them (one process when unset).

    Raises `DistributedError` for values that are not integers or do not fit together.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"inconsistent RANK={rank} / WORLD_SIZE={world}")
    local = _env_int("LOCAL_RANK", rank)
    if local < 0:
        raise DistributedError(f"LOCAL_RANK={local} is negative")
    return Dist(rank=rank, world_size=world, local_rank=local)


def setup_process_group(backend: str = "gloo", timeout_minutes: float = 60.0) -> Dist:
    """Join the process group ``torchrun`` describes (nothing to join in a single process).

    ``backend``: ``"gloo"`` (CPU; also fine for small objects on GPU machines), ``"nccl"``, or
    ``"auto"`` (NCCL when CUDA is available). Returns this process's `Dist`; raises
    `DistributedError` when the environment is inconsistent or lacks the rendezvous address.
    """
    info = from_environment()
    if not info.sharded or torch_dist.is_initialized():
        return info
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise DistributedError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset: use torchrun")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch_dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(minutes=timeout_minutes),
    )
    return info


def teardown_process_group() -> None:
    """Leave the process group, if this process joined one."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextmanager
def process_group(backend: str = "gloo", timeout_minutes: float = 60.0) -> Iterator[Dist]:
    """`setup_process_group` for the ``with`` block; leaves the group it joined at the end."""
    owned = not torch_dist.is_initialized()
    info = setup_process_group(backend, timeout_minutes)
    try:
        yield info
    finally:
        if owned and info.sharded:
            teardown_process_group()


def device_for_rank(device: str, info: Dist) -> str:
    """``device`` with a sharded CUDA run spread over the GPUs (``cuda:<local rank>``)."""
    if not info.sharded or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    return f"cuda:{info.local_rank % torch.cuda.device_count()}"
