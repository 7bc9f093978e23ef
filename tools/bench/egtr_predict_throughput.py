"""egtr predict throughput: the whole command (JPEG decoding in DataLoader workers) against the
bare model forward on pre-decoded tensors at the same batch size (the floor).

    python tools/bench/egtr_predict_throughput.py                       # CPU, the shipped model
    python tools/bench/egtr_predict_throughput.py --device cuda --dtype bfloat16 \\
        --images 512 --workers 0 4 8 --out bench.jsonl
    python tools/bench/egtr_predict_throughput.py --model vg-random     # the VG-size random model

Images: ``--images`` generated JPEGs (quality 90) of ``--size`` (default 640x480, the size of a
typical Visual Genome photo), smooth random colour fields with fine noise, so that they decode like
photos, not like pure noise. Model: ``--model DIR`` (default ``shared/models/egtr-shapes``), or
``vg-random``: the Visual Genome configuration with random weights (saved to a temporary folder).

Measured in one process, the variants interleaved in each of ``--repeats`` rounds (so that load
from other jobs hits all alike), best round of each:

- ``floor``: ``model(pixel_values, pixel_mask)`` on the batches ``egtr predict`` forms (the same
  preprocessing), already decoded and on the device; nothing else.
- ``decode (one process)``: reading, decoding and preprocessing alone, in this process (what one
  worker can supply), once.
- ``forward+postprocess``: ``EGTRPredictor.predict_inputs`` on the same pre-decoded batches (the
  forward, the scene-graph post-processing and the copies back), for reference.
- ``predict``: ``egtr predict FOLDER --out graphs.jsonl --batch-size B --workers W`` run through
  ``egtr.cli.main`` (discovery, decoding and preprocessing in the workers, forward,
  post-processing, JSON rows). Its steady-state throughput counts the images after the first
  batch, from the end of the first forward pass to the end of the last one (model loading,
  worker start-up and the first batch's latency excluded); the end-to-end figure (the whole call)
  is reported too, and ``in_model``: the fraction of the steady state spent in
  ``predict_inputs`` (forward and post-processing); the rest is the model waiting for images,
  writing rows and Python overhead.

Prints one JSON line per measurement and a summary line with each ``predict`` figure as a
fraction of the floor (goal: at least 0.9): best over best, and the median over the rounds of the
ratio within a round. ``--out`` appends the lines to a JSON Lines file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "shared" / "models" / "egtr-shapes"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(SHIPPED), help="model directory, or vg-random")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--images", type=int, default=96, help="JPEGs to generate (default 96)")
    parser.add_argument("--size", default="640x480", help="WxH of the JPEGs (default 640x480)")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="egtr predict --workers values to time (default: 0 and egtr's default)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of (default 2)")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if min(args.images, args.batch_size, args.repeats) < 1:
        parser.error("--images, --batch-size and --repeats must be at least 1")
    if args.images < 2 * args.batch_size:
        parser.error("--images must be at least twice --batch-size (steady state)")
    if args.workers is None:
        from egtr.inputs import default_workers

        args.workers = sorted({0, default_workers()})
    return args


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` photo-like JPEGs: a smooth random colour field plus fine noise."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
        field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def model_dir(name: str, scratch: Path) -> Path:
    """The model directory to time: ``name``, or the VG configuration with random weights."""
    if name != "vg-random":
        return Path(name)
    from egtr import egtr_visual_genome

    torch.manual_seed(0)
    target = scratch / "vg-random"
    egtr_visual_genome(weights=None).save_pretrained(target)
    return target


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from egtr.cli import main
    from egtr.loading import BlockImages
    from egtr.predictor import EGTRPredictor

    width, height = (int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="egtr-bench-") as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images, width, height)
        directory = model_dir(args.model, Path(scratch))
        predictor = EGTRPredictor(directory, device=device, dtype=dtype)
        model = predictor.model
        size = args.batch_size
        blocks = [range(i, min(i + size, len(paths))) for i in range(0, len(paths), size)]
        dataset = BlockImages([str(p) for p in paths], blocks, predictor.preprocessing)
        batches = [inputs for i in range(len(dataset)) for _, inputs in dataset[i].batches]
        on_device = [(b.pixel_values.to(device, dtype), b.pixel_mask.to(device)) for b in batches]
        common = {
            "bench": "egtr_predict_throughput",
            "model": args.model if args.model == "vg-random" else Path(args.model).name,
            "image_size": [width, height],
            "model_input": list(batches[0].pixel_values.shape[-2:][::-1]),
            "images": len(paths),
            "batch_size": size,
            "device": str(device),
            "dtype": args.dtype,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        }

        @torch.inference_mode()
        def floor() -> float:
            sync(device)
            start = time.perf_counter()
            for pixels, mask in on_device:
                model(pixel_values=pixels, pixel_mask=mask)
            sync(device)
            return time.perf_counter() - start

        def forward_and_postprocess() -> float:
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                predictor.predict_inputs(batch)
            sync(device)
            return time.perf_counter() - start

        def decode() -> float:
            start = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            return time.perf_counter() - start

        floor()  # warm-up (kernels, allocator)
        forward_and_postprocess()
        count = len(paths)
        decode_rate = count / decode()
        lines.append(
            {**common, "variant": "decode (one process)", "images_per_s": round(decode_rate, 2)}
        )
        floor_rates: list[float] = []
        post_rates: list[float] = []
        runs: dict[int, list[tuple[float, float, float]]] = {w: [] for w in args.workers}
        for repeat in range(args.repeats):  # interleaved: load from other jobs hits all alike
            floor_rates.append(count / floor())
            post_rates.append(count / forward_and_postprocess())
            for workers in args.workers:
                out = Path(scratch) / f"graphs-{workers}-{repeat}.jsonl"
                runs[workers].append(_time_predict(main, args, folder, directory, workers, out))
        floor_rate = max(floor_rates)
        lines.append({**common, "variant": "floor", "images_per_s": round(floor_rate, 2)})
        lines.append(
            {**common, "variant": "forward+postprocess", "images_per_s": round(max(post_rates), 2)}
        )
        for workers, timings in runs.items():
            steady, _, busy = max(timings)
            in_round = sorted(t[0] / f for t, f in zip(timings, floor_rates, strict=True))
            lines.append(
                {
                    **common,
                    "variant": "predict",
                    "workers": workers,
                    "images_per_s": round(steady, 2),
                    "end_to_end_images_per_s": round(max(t[1] for t in timings), 2),
                    "of_floor": round(steady / floor_rate, 3),
                    "of_floor_median_per_round": round(in_round[len(in_round) // 2], 3),
                    "in_model": round(busy, 3),
                }
            )
    return lines


def _time_predict(
    main: Callable[[list[str]], int],
    args: argparse.Namespace,
    folder: Path,
    directory: Path,
    workers: int,
    out: Path,
) -> tuple[float, float, float]:
    """One ``egtr predict`` run: ``(steady-state images/s, end-to-end images/s, in_model)``,
    ``in_model`` being the fraction of the steady state spent in the model (forward and
    post-processing); the rest is waiting for images, writing rows and Python overhead."""
    from egtr.predictor import EGTRPredictor

    real = EGTRPredictor.predict_inputs
    calls: list[tuple[float, float]] = []

    def timed(self: EGTRPredictor, inputs: Any) -> Any:
        start = time.perf_counter()
        graphs = real(self, inputs)  # post-processing reads the outputs: the device is done
        calls.append((start, time.perf_counter()))
        return graphs

    argv = [str(folder), "--model", str(directory), "--device", args.device]
    argv += ["--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    argv += ["--workers", str(workers), "--quiet", "--overwrite", "--out", str(out)]
    EGTRPredictor.predict_inputs = timed  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        status = main(["predict", *argv])
        whole = time.perf_counter() - start
    finally:
        EGTRPredictor.predict_inputs = real  # type: ignore[method-assign]
    if status != 0:
        raise RuntimeError(f"egtr predict exited with {status}")
    rows = out.read_text().count("\n")
    if rows != args.images:
        raise RuntimeError(f"egtr predict wrote {rows} rows, not {args.images}")
    span = calls[-1][1] - calls[0][1]
    busy = sum(end - begin for begin, end in calls[1:]) / span
    return (args.images - args.batch_size) / span, args.images / whole, busy


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lines = measure(args)
    floor = next(line["images_per_s"] for line in lines if line["variant"] == "floor")
    ratios = {
        f"workers={line['workers']}": [line["of_floor"], line["of_floor_median_per_round"]]
        for line in lines
        if line["variant"] == "predict"
    }
    summary = {
        "bench": "egtr_predict_throughput",
        "summary": True,
        "floor_images_per_s": floor,
        "predict_of_floor": ratios,  # [best / best, median of per-round ratios]
        "goal": "predict >= 0.9x the floor",
        "met": {name: max(pair) >= 0.9 for name, pair in ratios.items()},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
    }
    for line in [*lines, summary]:
        print(json.dumps(line), flush=True)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as handle:
            for line in [*lines, summary]:
                handle.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
