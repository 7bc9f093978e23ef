"""clip4dm throughput: ``CLIP4DM.detect_batch`` against the literal per-pair procedure and
against a plain CLIPScore forward — same random model, same inputs, same run.

    python tools/bench/clip4dm_throughput.py --shape vit-b-32 --device cpu
    python tools/bench/clip4dm_throughput.py --shape vit-l-14 --device cuda --dtype float16 \
        --batch-sizes 1 16 64

Reports pairs/s for each and the two ratios the spec targets (speed-up over the per-pair
procedure; cost relative to CLIPScore). Prints a JSON line (and writes it with --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip4dm import CLIP4DM
from clip4dm._reference import literal_relevance
from vl_core import load_clip, resolve_device, resolve_dtype
from vl_core.clip import ClipBackbone
from vl_core.testing import make_tiny_hf_clip

WORDS = [
    "a",
    "red",
    "dog",
    "cat",
    "sits",
    "on",
    "the",
    "wooden",
    "table",
    "next",
    "to",
    "two",
    "blue",
    "cups",
    "of",
    "coffee",
    "in",
    "a",
    "kitchen",
]


def make_inputs(
    pairs: int, captions_per_image: int, seed: int = 0
) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(seed)
    distinct = [
        Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8))
        for _ in range(max(1, pairs // captions_per_image))
    ]
    images = [distinct[i // captions_per_image % len(distinct)] for i in range(pairs)]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))) for _ in range(pairs)]
    return images, texts


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def clipscore_forward(
    backbone: ClipBackbone, images: list[Image.Image], texts: list[str], batch: int
) -> None:
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            pixels = backbone.preprocess(images[start : start + batch])
            tokens = backbone.tokenize(
                ["A photo depicts " + t for t in texts[start : start + batch]]
            )
            backbone.cosine(backbone.encode_image(pixels), backbone.encode_text(tokens.ids))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="vit-b-32", choices=["tiny", "vit-b-32", "vit-l-14"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument(
        "--literal-pairs", type=int, default=8, help="pairs timed for the slow baseline"
    )
    parser.add_argument("--captions-per-image", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_hf_clip(Path(tmp) / "clip", shape=args.shape)
        backbone = load_clip(f"hf:{model_dir}", device=device, dtype=dtype)
    images, texts = make_inputs(args.pairs, args.captions_per_image)
    detector = CLIP4DM(backbone, mode="threshold")

    lit_n = min(args.literal_pairs, args.pairs)
    lit_time = timed(
        lambda: [
            literal_relevance(backbone, images[i], detector.template + texts[i], detector.layers)
            for i in range(lit_n)
        ],
        device,
        1,
    )
    literal_pps = lit_n / lit_time
    rows = []
    for batch in args.batch_sizes:
        fast = timed(
            functools.partial(detector.detect_batch, images, texts, batch_size=batch),
            device,
            args.repeats,
        )
        plain = timed(
            functools.partial(clipscore_forward, backbone, images, texts, batch),
            device,
            args.repeats,
        )
        rows.append(
            {
                "batch_size": batch,
                "clip4dm_pairs_per_s": round(args.pairs / fast, 2),
                "clipscore_pairs_per_s": round(args.pairs / plain, 2),
                "speedup_vs_literal": round((args.pairs / fast) / literal_pps, 2),
                "cost_vs_clipscore": round(fast / plain, 3),
            }
        )
    report = {
        "benchmark": "clip4dm_throughput",
        "shape": args.shape,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "pairs": args.pairs,
        "captions_per_image": args.captions_per_image,
        "literal_pairs_per_s": round(literal_pps, 3),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    line = json.dumps(report)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
