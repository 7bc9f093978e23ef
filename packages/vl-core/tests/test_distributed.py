"""The torchrun helper (vl_core.distributed): environment, sharding, and a 2-process gloo group."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vl_core.distributed import (
    Dist,
    DistributedError,
    device_for_rank,
    from_environment,
    process_group,
)


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    info = from_environment()
    assert info == Dist(0, 1, 0)
    assert info.is_main
    assert not info.sharded
    assert info.all_gather("x") == ["x"]
    assert info.broadcast(3) == 3
    assert list(info.shard(3)) == [0, 1, 2]
    assert info.run_on_main(lambda: 5) == 5
    values = torch.tensor([1.0, 2.0])
    assert info.all_reduce_sum(values) is values
    assert device_for_rank("cuda", info) == "cuda"
    with process_group() as group:
        assert group == info


def test_local_rank_defaults_to_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert from_environment() == Dist(3, 4, 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment().local_rank == 1


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent RANK=2 / WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "inconsistent"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "negative"),
    ],
)
def test_bad_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    _clear(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match=match):
        from_environment()


def test_group_needs_a_rendezvous(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DistributedError, match="MASTER_ADDR"), process_group():
        pass


def test_shards_cover_the_inputs_once() -> None:
    for world in (1, 2, 3, 5):
        taken = sorted(i for rank in range(world) for i in Dist(rank, world, rank).shard(11))
        assert taken == list(range(11))


_WORKER = """
import sys
from pathlib import Path

import torch

from vl_core.distributed import DistributedError, process_group

torch.set_num_threads(1)
with process_group() as info:
    gathered = info.all_gather({"rank": info.rank})
    total = info.all_reduce_sum(torch.tensor([float(info.rank + 1)]))
    chosen = info.broadcast(f"from {info.rank}")
    try:
        info.run_on_main(lambda: 1 // 0)
        failure = ""
    except ZeroDivisionError:
        failure = "zero"
    except DistributedError as exc:
        failure = f"peer: {'division' in str(exc)}"
    info.barrier()
Path(sys.argv[1], f"{info.rank}.txt").write_text(repr((gathered, total.item(), chosen, failure)))
"""


def test_two_gloo_processes_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port()), str(script), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    zero = (tmp_path / "0.txt").read_text()
    one = (tmp_path / "1.txt").read_text()
    assert zero == repr(([{"rank": 0}, {"rank": 1}], 3.0, "from 0", "zero"))
    assert one == repr(([{"rank": 0}, {"rank": 1}], 3.0, "from 0", "peer: True"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
