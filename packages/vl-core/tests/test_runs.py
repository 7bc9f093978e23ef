"""``vl_core.runs.ShardedRun``: sharded, resumable row runs whose final file never depends on how
the run was split or interrupted."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vl_core.distributed import Dist
from vl_core.files import OutputExistsError, ResultsFileError
from vl_core.runs import Block, ShardedRun, leftover_parts, part_path

IDS: list[Any] = ["a", 1, "1", "bad", "c", "d", 7, "e", "f"]


def _row(ids: Sequence[Any], position: int, block: Block) -> dict[str, Any]:
    """A deterministic row that depends on the whole block (as a padded batch's outputs do)."""
    value = ids[position]
    if value == "bad":
        return {"id": value, "error": "unreadable input"}
    members = json.dumps([ids[p] for p in block.positions])
    digest = hashlib.sha256(f"{json.dumps(value)}|{members}".encode()).hexdigest()[:12]
    return {"id": value, "value": digest, "text": "café"}


def _work(run: ShardedRun, stop_after: int | None = None) -> int:
    """Write this rank's rows; with ``stop_after``, stop there as a killed process would."""
    written = 0
    with run.writing() as writer:
        for block in run.blocks:
            for position in block.todo:
                if stop_after is not None and written == stop_after:
                    return written
                writer.write(_row(run.ids, position, block))
                written += 1
    return written


def _run_all(out: Path, world: int, *, block: int = 2, stop: dict[int, int] | None = None) -> None:
    """Every rank of a ``world``-process run, one after the other (no process group: the
    collectives are no-ops), ``stop[rank]`` rows each when given (then no merge: a killed run)."""
    runs = [
        ShardedRun(out, IDS, Dist(rank, world, rank), block_size=block) for rank in range(world)
    ]
    for run in runs:
        run.start()
    for rank, run in enumerate(runs):
        _work(run, None if stop is None else stop.get(rank, 10**6))
    if stop is None:
        for run in runs:
            run.finish()


@pytest.fixture
def reference(tmp_path: Path) -> bytes:
    out = tmp_path / "reference" / "rows.jsonl"
    _run_all(out, 1)
    return out.read_bytes()


def test_single_process_writes_rows_in_input_order(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    run = ShardedRun(out, IDS, block_size=2)
    assert run.part == out
    resumed = run.start()
    assert (resumed.done, resumed.retried, resumed.repaired, resumed.parts) == (0, 0, (), 0)
    assert [list(b.positions) for b in run.blocks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert run.todo == list(range(len(IDS)))
    assert _work(run) == len(IDS)
    finished = run.finish()
    assert [row["id"] for row in finished.rows] == IDS
    assert (finished.written, finished.errors, finished.missing) == (9, 1, 0)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == finished.rows
    assert '"café"' in lines[0]  # UTF-8, not escaped
    assert leftover_parts(out) == []

    again = ShardedRun(out, IDS, block_size=2)
    resumed = again.start()
    assert (resumed.done, resumed.retried) == (8, 1)  # the error row is computed again
    assert again.todo == [3]
    assert [list(b.positions) for b in again.blocks] == [[2, 3]]  # its whole block


def test_blocks_are_dealt_round_robin_and_cover_the_inputs_once(tmp_path: Path) -> None:
    for world in (1, 2, 3, 5):
        for size in (1, 2, 4):
            seen: list[int] = []
            for rank in range(world):
                run = ShardedRun(
                    tmp_path / "x.jsonl", IDS, Dist(rank, world, rank), block_size=size
                )
                run.start()
                for block in run.blocks:
                    assert block.positions.start // size % world == rank
                    assert len(block.positions) == size or block.positions.stop == len(IDS)
                seen += run.todo
            assert sorted(seen) == list(range(len(IDS))), (world, size)
    assert part_path(tmp_path / "x.jsonl", 3) == tmp_path / ".x.jsonl.part-3"
    assert ShardedRun(tmp_path / "x.jsonl", IDS, Dist(1, 2, 1)).part == tmp_path / ".x.jsonl.part-1"


@pytest.mark.parametrize(
    ("first", "stop", "second"),
    [
        (1, {0: 4}, 2),  # a single process killed midway, resumed by two
        (1, {0: 5}, 1),  # ... resumed by one
        (2, {0: 1, 1: 3}, 3),  # two ranks killed, resumed by three
        (3, {0: 0, 1: 2, 2: 1}, 1),  # three ranks killed, resumed by one
        (2, {0: 0, 1: 0}, 2),  # killed before any row
    ],
)
def test_a_killed_run_resumes_to_the_same_bytes(
    tmp_path: Path, reference: bytes, first: int, stop: dict[int, int], second: int
) -> None:
    out = tmp_path / "rows.jsonl"
    _run_all(out, first, stop=stop)
    assert len(leftover_parts(out)) == (0 if first == 1 else sum(1 for n in stop.values() if n))
    # a torn last line, as a kill in the middle of a write leaves
    torn = part_path(out, first - 1) if first > 1 else out
    with torn.open("ab") as handle:
        handle.write(b'{"id": "e", "val')
    _run_all(out, second)
    assert out.read_bytes() == reference
    assert leftover_parts(out) == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_reports_what_it_folded_in(tmp_path: Path, reference: bytes) -> None:
    out = tmp_path / "rows.jsonl"
    _run_all(out, 2, stop={0: 3, 1: 2})
    with part_path(out, 1).open("ab") as handle:
        handle.write(b'{"id": 7, "va')
    run = ShardedRun(out, IDS, block_size=2)
    resumed = run.start()
    assert resumed.parts == 2
    assert resumed.retried == 1  # "bad", written by rank 1
    assert resumed.done == 4
    assert resumed.repaired == (".rows.jsonl.part-1 line 3: truncated last line (interrupted run)",)
    assert leftover_parts(out) == []
    done = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert done == [IDS[p] for p in range(len(IDS)) if p not in run.todo]  # in input order
    _work(run)
    run.finish()
    assert out.read_bytes() == reference


def test_killed_between_the_merge_and_the_removal_of_the_parts(
    tmp_path: Path, reference: bytes
) -> None:
    out = tmp_path / "rows.jsonl"
    _run_all(out, 2, stop={})
    kept = {path: path.read_bytes() for path in leftover_parts(out)}
    _run_all(out, 2)
    for path, data in kept.items():  # the parts outlive the merged file
        path.write_bytes(data)
    _run_all(out, 3)
    assert out.read_bytes() == reference
    assert leftover_parts(out) == []


def test_a_failing_rank_keeps_its_rows_for_the_resume(tmp_path: Path, reference: bytes) -> None:
    out = tmp_path / "rows.jsonl"
    run = ShardedRun(out, IDS, block_size=2)
    run.start()

    def fail_midway() -> None:
        with run.writing() as writer:
            writer.write(_row(IDS, 0, run.blocks[0]))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a"]
    resumed = ShardedRun(out, IDS, block_size=2)
    assert resumed.start().done == 1
    assert resumed.blocks[0] == Block(range(2), (1,))
    _work(resumed)
    resumed.finish()
    assert out.read_bytes() == reference


def test_a_foreign_file_is_refused_and_overwrite_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text("name,score\nx,1\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ShardedRun(out, IDS).start()
    assert out.read_text() == "name,score\nx,1\n"
    part_path(out, 4).write_text('{"id": "a", "value": "stale"}\n')
    run = ShardedRun(out, IDS, overwrite=True)
    assert run.start().done == 0
    assert not out.exists()
    assert leftover_parts(out) == []
    assert len(run.todo) == len(IDS)


def test_the_manifest_guards_the_inputs_and_settings(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    manifest = tmp_path / "rows.jsonl.run.json"
    record = {"data": {"size": 3, "sha256": "ab"}, "top_k": 5}
    run = ShardedRun(out, IDS, manifest=manifest, record=record)
    run.start()
    assert json.loads(manifest.read_text()) == record
    _work(run, stop_after=2)
    changed = {**record, "top_k": 6}
    with pytest.raises(ResultsFileError, match=r"top_k: 5 -> 6"):
        ShardedRun(out, IDS, manifest=manifest, record=changed).start()
    assert len(out.read_text().splitlines()) == 2
    restarted = ShardedRun(out, IDS, manifest=manifest, record=changed, overwrite=True)
    assert restarted.start().done == 0
    assert json.loads(manifest.read_text()) == changed
    # a manifest without any row (a run that failed before writing) describes nothing
    ShardedRun(out, IDS, manifest=manifest, record=record).start()
    assert json.loads(manifest.read_text()) == record


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appears twice"):
        ShardedRun(tmp_path / "o.jsonl", ["a", "b", "a"])
    with pytest.raises(ValueError, match="block_size"):
        ShardedRun(tmp_path / "o.jsonl", ["a"], block_size=0)
    run = ShardedRun(tmp_path / "o.jsonl", ["a"])
    with pytest.raises(RuntimeError, match="start"):
        run.writer()
    with pytest.raises(RuntimeError, match="start"):
        run.finish()
    ShardedRun(tmp_path / "o.jsonl", [1, "1"]).start()  # 1 and "1" are different ids


_WORKER = """
import hashlib, json, sys
from pathlib import Path

from vl_core.distributed import DistributedError, process_group
from vl_core.runs import ShardedRun

out, fail_rank = Path(sys.argv[1]), int(sys.argv[2])
ids = json.loads(sys.argv[3])
with process_group() as dist:
    run = ShardedRun(out, ids, dist, block_size=2)
    resumed = run.start()
    outcome = "ok"
    try:
        with run.writing() as writer:
            for block in run.blocks:
                for position in block.todo:
                    value = ids[position]
                    if value == "bad":
                        writer.write({"id": value, "error": "unreadable input"})
                        continue
                    members = json.dumps([ids[p] for p in block.positions])
                    text = f"{json.dumps(value)}|{members}"
                    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
                    writer.write({"id": value, "value": digest, "text": "café"})
                    if dist.rank == fail_rank:
                        raise ValueError("disk full")
        finished = run.finish()
        outcome = f"ok {finished.written} {len(finished.rows)} {finished.errors}"
    except DistributedError as exc:
        outcome = f"peer: {exc}"
    except ValueError as exc:
        outcome = f"self: {exc}"
    Path(f"{out}.rank{dist.rank}").write_text(outcome)
"""


def test_two_gloo_processes_under_torchrun(tmp_path: Path, reference: bytes) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER, encoding="utf-8")
    out = tmp_path / "rows.jsonl"

    def launch(fail_rank: int) -> tuple[str, str]:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        command += ["--master-port", str(_free_port()), str(script), str(out), str(fail_rank)]
        command.append(json.dumps(IDS))
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return Path(f"{out}.rank0").read_text(), Path(f"{out}.rank1").read_text()

    # rank 1 fails after its first row: rank 0 learns it, nothing is merged, the rows stay
    assert launch(fail_rank=1) == ("peer: rank 1: disk full", "self: disk full")
    assert not out.exists()
    assert [p.name for p in leftover_parts(out)] == [".rows.jsonl.part-0", ".rows.jsonl.part-1"]
    # the resumed run (same command) completes them; the merged file is a single process's
    zero, one = launch(fail_rank=-1)
    assert zero == "ok 3 9 1"  # rank 0's 5 rows and rank 1's first were kept: 3 to go
    assert one == "ok 3 0 1"
    assert out.read_bytes() == reference
    assert leftover_parts(out) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
