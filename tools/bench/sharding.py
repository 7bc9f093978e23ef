"""``clip4dm detect --pairs`` under ``torchrun``: wall time for 1, 2, ... processes, and a check
that every run writes the same output file (byte for byte).

    python tools/bench/sharding.py --pairs 512 --procs 1 2 4 --device cpu
    python tools/bench/sharding.py --model hf:openai/clip-vit-base-patch32 --device cuda \
        --pairs 4096 --procs 1 2 --format parquet

Writes a synthetic pairs file (random images, short captions) in a temporary folder (a tiny
random CLIP unless ``--model`` is given), runs ``python -m torch.distributed.run
--nproc-per-node N -m clip4dm detect --pairs ...`` for each N, and prints one JSON line: the
seconds and pairs/s of each run and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["a", "red", "dog", "cat", "on", "the", "wooden", "table", "two", "blue", "cups", "kitchen"]


def write_pairs(folder: Path, count: int, kind: str, seed: int = 0) -> Path:
    """``count`` pairs over 16 random images, as ``pairs.<kind>``; returns its path."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(16):
        name = f"{index}.png"
        pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        images.append(name)
    rows = [
        {
            "id": f"p{index}",
            "image": images[index % len(images)],
            "text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
        }
        for index in range(count)
    ]
    path = folder / f"pairs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "image", "text"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        pa = importlib.import_module("pyarrow")  # no type hints: a plain module
        pq = importlib.import_module("pyarrow.parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(procs: int, pairs: Path, out: Path, options: list[str]) -> float:
    """Seconds for one ``torchrun`` run; raises ``RuntimeError`` when it fails (exit > 1)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(procs), "-m", "clip4dm", "detect"]
    command += ["--pairs", str(pairs), "--out", str(out), "--quiet", *options]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{procs} process(es) failed:\n{done.stderr[-4000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=256, help="number of pairs (default: 256)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts")
    parser.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    parser.add_argument("--model", help="model to use (default: a tiny random CLIP)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = args.model
        if model is None:
            from vl_core.testing import make_tiny_hf_clip

            model = f"hf:{make_tiny_hf_clip(folder / 'tiny-clip')}"
        pairs = write_pairs(folder, args.pairs, args.format)
        options = ["--model", model, "--device", args.device, "--batch-size", str(args.batch_size)]
        runs = []
        outputs = []
        for procs in args.procs:
            out = folder / f"results-{procs}.jsonl"
            seconds = run(procs, pairs, out, options)
            outputs.append(out.read_bytes())
            runs.append(
                {"procs": procs, "seconds": round(seconds, 2), "pairs_s": args.pairs / seconds}
            )
        report = {
            "pairs": args.pairs,
            "format": args.format,
            "model": args.model or "tiny random CLIP",
            "device": args.device,
            "batch_size": args.batch_size,
            "runs": runs,
            "identical": all(output == outputs[0] for output in outputs),
        }
    line = json.dumps(report)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")
    if not report["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
