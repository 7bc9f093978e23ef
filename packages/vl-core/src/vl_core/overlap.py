"""Two pieces of CPU work at once, each with its own share of torch's intra-op threads.

At batch 1 a CPU spreads small matrix products over its threads poorly. CLIP's text tower at
16 tokens is bound by reading its weights from memory: on the 2-core machine of BENCHMARKS.md it
ran no faster on 2 threads than on 1, while the image tower ran about 1.5x faster.
Two independent parts of a call then finish sooner side by side than one after the other.

:func:`alongside` runs ``work`` on a helper thread while the caller goes on. Torch's intra-op
thread count is per thread once a thread has run an op, so the helper runs with ``threads[0]``
and the caller with ``threads[1]``. When the caller asks for the work's result
(`Job.result`), it has finished its own part: it gets back the thread count it had, and the
helper may take over all the threads at its next :func:`claim_threads` (work that calls it
between steps, such as `vl_core._hf_vision`'s layer loop, so uses the whole machine once the caller
waits).

The helper is one long-lived thread per process, shared by every caller; while it is busy
(another caller's job, or a job started from inside a job), ``work`` runs at once on the calling
thread instead, before the body, and no thread count changes.

Grad mode is per thread in torch: the work runs with the caller's grad mode at the time of the
call (``torch.no_grad`` and inference mode inside ``work`` apply as usual).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, TypeVar

import torch

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_busy = threading.Lock()  # one job at a time on the helper thread
_local = threading.local()  # on the helper thread: `.widen`, the job's hand-over


class _Widen:
    """The hand-over of the caller's threads to the helper."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.released = threading.Event()
        self.taken = False


def _helper() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vl-core-alongside")
        return _executor


def split_threads(total: int, share: float) -> tuple[int, int] | None:
    """``(helper, caller)`` thread counts that add up to ``total``, the helper getting about
    ``share`` of them and each at least one; ``None`` when ``total`` is below 2 (nothing to
    split).

    Raises ``ValueError`` for a ``share`` outside (0, 1).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if total < 2:
        return None
    helper = min(total - 1, max(1, round(total * share)))
    return helper, total - helper


def claim_threads() -> None:
    """A point between two steps of work run by `alongside`: once the caller waits for the
    result, the helper takes all the threads from here on. Elsewhere it does nothing."""
    widen: _Widen | None = getattr(_local, "widen", None)
    if widen is not None and not widen.taken and widen.released.is_set():
        widen.taken = True
        torch.set_num_threads(widen.total)


class Job(Generic[T]):
    """Work started by `alongside`; `result` waits for it."""

    def __init__(
        self, future: Future[T], restore: Callable[[], None], widen: _Widen | None
    ) -> None:
        self._future = future
        self._restore = restore
        self._widen = widen
        self._done = False

    def result(self) -> T:
        """The work's value (or its exception, raised here). The caller's thread count is what
        it was before `alongside` from here on, and the helper may take every thread."""
        self._release()
        try:
            return self._future.result()
        finally:
            self._finish()

    def _release(self) -> None:
        if self._widen is not None:
            self._widen.released.set()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._future.exception()  # wait; the exception, if any, is `result`'s to raise
            finally:
                self._restore()


@contextmanager
def alongside(work: Callable[[], T], *, threads: tuple[int, int] | None) -> Iterator[Job[T]]:
    """Run ``work`` on the helper thread with ``threads[0]`` intra-op threads while the body of
    the ``with`` runs with ``threads[1]``; yields its `Job`. With ``threads=None`` (see
    `split_threads`), or while the helper is busy, ``work`` runs at once on the calling thread,
    before the body.

    The caller's thread count is restored when ``job.result()`` is first called, or at the end of
    the block; leaving the block (even by an exception) waits for the work first, so nothing of it
    runs on after. An exception raised by ``work`` is raised by ``job.result()`` (and dropped if
    the block never asks for the result).

    Raises ``ValueError`` for a thread count below 1.
    """
    if threads is not None and min(threads) < 1:
        raise ValueError(f"thread counts must be >= 1, got {threads}")
    if threads is None or not _busy.acquire(blocking=False):
        done: Future[T] = Future()
        try:
            done.set_result(work())
        except Exception as exc:  # raised by job.result(), as from the helper
            done.set_exception(exc)
        yield Job(done, lambda: None, None)
        return
    helper_threads, caller_threads = threads
    grad = torch.is_grad_enabled()
    before = torch.get_num_threads()
    widen = _Widen(helper_threads + caller_threads)

    def run() -> T:
        torch.set_num_threads(helper_threads)
        _local.widen = widen
        try:
            with torch.set_grad_enabled(grad):
                return work()
        finally:
            _local.widen = None

    try:
        future = _helper().submit(run)
    except BaseException:
        _busy.release()
        raise
    torch.set_num_threads(caller_threads)
    job = Job(future, lambda: torch.set_num_threads(before), widen)
    try:
        yield job
    finally:
        try:
            job._release()
            job._finish()
        finally:
            _busy.release()


__all__ = ["Job", "alongside", "claim_threads", "split_threads"]
