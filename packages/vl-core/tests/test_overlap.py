"""`vl_core.overlap`: work on a helper thread with its own share of torch's threads (issue 16)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from vl_core.overlap import alongside, claim_threads, split_threads
from vl_core.testing import intra_op_threads


@pytest.fixture(autouse=True)
def _four_threads() -> Iterator[None]:
    with intra_op_threads(4):
        yield


def test_split_threads_gives_each_side_at_least_one() -> None:
    assert split_threads(1, 0.75) is None
    assert split_threads(2, 0.75) == (1, 1)
    assert split_threads(4, 0.75) == (3, 1)
    assert split_threads(16, 0.75) == (12, 4)
    assert split_threads(3, 0.1) == (1, 2)
    with pytest.raises(ValueError, match="share"):
        split_threads(4, 1.0)


def test_work_runs_on_the_helper_with_its_threads_while_the_caller_has_its_own() -> None:
    def work() -> tuple[str, int, bool]:
        return threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled()

    with torch.no_grad(), alongside(work, threads=(3, 1)) as job:
        assert torch.get_num_threads() == 1  # the caller's share while the work runs
        name, threads, grad = job.result()
        assert torch.get_num_threads() == 4  # back once the caller waits
    assert name.startswith("vl-core-alongside")
    assert name != threading.current_thread().name
    assert threads == 3
    assert grad is False  # the caller's grad mode at the call
    assert torch.get_num_threads() == 4


def test_the_helper_takes_every_thread_at_claim_threads_once_the_caller_waits() -> None:
    seen: list[int] = []

    def work() -> list[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            claim_threads()
            seen.append(torch.get_num_threads())
            if seen[-1] == 4:
                break
            time.sleep(0.001)
        return seen

    with alongside(work, threads=(3, 1)) as job:
        time.sleep(0.02)  # the helper runs on its share meanwhile
        counts = job.result()
    assert counts[0] == 3
    assert counts[-1] == 4
    claim_threads()  # on the caller's thread: nothing to take
    assert torch.get_num_threads() == 4


def test_the_works_exception_is_raised_by_result_and_threads_are_restored() -> None:
    def work() -> int:
        raise KeyError("broken")

    with alongside(work, threads=(2, 2)) as job, pytest.raises(KeyError, match="broken"):
        job.result()
    assert torch.get_num_threads() == 4


def test_leaving_the_block_by_an_exception_waits_for_the_work() -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    with pytest.raises(RuntimeError, match="body"), alongside(work, threads=(1, 3)):
        raise RuntimeError("body")
    assert finished.is_set()
    assert torch.get_num_threads() == 4


def test_without_threads_or_while_busy_the_work_runs_first_on_the_caller() -> None:
    order: list[str] = []

    def work(tag: str) -> str:
        order.append(tag)
        return threading.current_thread().name

    with alongside(lambda: work("none"), threads=None) as job:
        order.append("body")
        assert torch.get_num_threads() == 4
        assert job.result() == threading.current_thread().name
    assert order == ["none", "body"]

    # a job started from inside a job (the helper is taken) runs inline on the helper
    def outer() -> str:
        with alongside(lambda: work("inner"), threads=(1, 1)) as inner:
            return inner.result()

    with alongside(outer, threads=(2, 2)) as job:
        helper_name = job.result()
    assert helper_name.startswith("vl-core-alongside")


def test_a_thread_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"), alongside(lambda: None, threads=(0, 2)):
        pass
