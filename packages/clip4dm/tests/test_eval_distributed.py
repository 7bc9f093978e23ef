"""Sharded runs: ``torchrun --nproc-per-node 2 -m clip4dm.eval`` on CPU (gloo) writes the same rows
and result as one process; leftover shards of an interrupted sharded run are folded in on resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm.eval.cli import main


def write_nocaps(root: Path) -> tuple[Path, Path]:
    """A small nocaps-val-foil.json (five entries: one malformed, one with a missing image)."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.jpg")
    nouns = [("bus", "car"), ("guitar", "violin"), ("cat", "dog"), ("boat", "train"), ("x", "y")]
    domains = ["in-domain", "near-domain", "out-domain", "in-domain", "out-domain"]
    entries: list[Any] = [
        {
            "image_path": f"{i}.jpg",
            "references": [f"a photo of a {a}", f"the {a} here"],
            "baseline": f"A {a} next to a tree.",
            "foil": f"A {b} next to a tree.",
            "replacement": [a, b],
            "domain": domains[i],
        }
        for i, (a, b) in enumerate(nouns)
    ]  # entry 4's image does not exist
    entries.insert(2, {"image_path": "0.jpg", "baseline": "no foil"})
    path = root / "nocaps-val-foil.json"
    path.write_text(json.dumps(entries))
    return path, images


def _read(out: Path) -> tuple[dict[str, Any], str]:
    result = json.loads((out / "result.json").read_text())
    return result, (out / "samples.jsonl").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _compare(single: Path, sharded: Path) -> None:
    one, one_rows = _read(single)
    two, two_rows = _read(sharded)
    assert two_rows == one_rows  # same batches, so the very same rows, in data set order
    for key in ("metrics", "groups", "counts", "errors", "model", "config"):
        assert two[key] == one[key], key
    assert (one["run"]["world_size"], two["run"]["world_size"]) == (1, 2)
    assert one["counts"] == {"samples": 12, "scored": 8, "errors": 4, "missing": 0}
    assert not (sharded / ".shards").exists()


def _common(data: Path, images: Path, model: Path) -> list[str]:
    return [
        "nocaps-foil",
        "--data",
        str(data),
        "--images-root",
        str(images),
        "--model",
        f"hf:{model}",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--quiet",
    ]


def _worker_env(rank: int, port: int) -> dict[str, str]:
    """The environment torchrun gives worker ``rank`` of 2."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def test_two_process_gloo_run_equals_one_process(tmp_path: Path, tiny_hf_dir: Path) -> None:
    """Two ``python -m clip4dm.eval`` workers, started as torchrun starts them, vs one process."""
    data, images = write_nocaps(tmp_path / "data")
    common = _common(data, images, tiny_hf_dir)
    assert main([*common, "--out", str(tmp_path / "single")]) == 1  # 4 error rows
    command = [sys.executable, "-m", "clip4dm.eval", *common, "--out", str(tmp_path / "sharded")]
    port = _free_port()
    workers = [
        subprocess.Popen(
            command,
            env=_worker_env(rank, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:  # a rank that hangs waiting for a failed peer
                worker.kill()
    # rank 0 reports the run: finished with error rows (exit 1); the other ranks exit 0
    for worker, (_, err), status in zip(workers, outputs, (1, 0), strict=True):
        assert worker.returncode == status, err[-3000:]
    assert "12 samples, 8 scored, 4 errors" in outputs[0][0]
    assert outputs[1][0] == ""  # only rank 0 reports
    _compare(tmp_path / "single", tmp_path / "sharded")


@pytest.mark.slow
def test_torchrun_module_entry_point(tmp_path: Path, tiny_hf_dir: Path) -> None:
    """The documented launcher: torchrun --nproc-per-node 2 -m clip4dm.eval ..."""
    data, images = write_nocaps(tmp_path / "data")
    common = _common(data, images, tiny_hf_dir)
    assert main([*common, "--out", str(tmp_path / "single")]) == 1  # 4 error rows
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "clip4dm.eval",
        *common,
        "--out",
        str(tmp_path / "sharded"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]  # rank 0: finished with 4 error rows
    assert "clip4dm eval nocaps-foil: 12 samples, 8 scored, 4 errors" in done.stdout
    _compare(tmp_path / "single", tmp_path / "sharded")


def test_leftover_shards_are_folded_in_on_resume(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "nocaps-foil",
        "--data",
        str(data),
        "--images-root",
        str(images),
        "--out",
        str(out),
        "--model",
        f"hf:{tiny_hf_dir}",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 1
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # As if a sharded run was interrupted: rank 1 had written two rows (one marked) and a torn one.
    kept = [r for r in rows if r["id"] not in ("0/baseline", "1/foil", "3/foil")]
    marked = next(r for r in rows if r["id"] == "0/baseline")
    marked["clip_score"] = 123.0
    shard = [marked, next(r for r in rows if r["id"] == "1/foil")]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / ".shards").mkdir()
    torn = json.dumps(next(r for r in rows if r["id"] == "3/foil"))[:40]
    (out / ".shards" / "rank-00001.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in shard) + torn
    )
    capsys.readouterr()
    assert main(argv) == 1
    # the torn row and the 4 error rows (retried) are computed again, nothing else
    assert "5 computed now, 7 already done" in capsys.readouterr().out
    final = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in final] == [r["id"] for r in rows]
    by_id = {r["id"]: r for r in final}
    assert by_id["0/baseline"]["clip_score"] == 123.0  # taken from the shard, not recomputed
    again, before = by_id["3/foil"], next(r for r in rows if r["id"] == "3/foil")
    assert again["caption"] == before["caption"]  # recomputed (alone, so floats may differ)
    assert again["clip_score"] == pytest.approx(before["clip_score"], rel=1e-4, abs=1e-6)
    assert not (out / ".shards").exists()
