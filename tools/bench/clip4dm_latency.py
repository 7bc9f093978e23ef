"""clip4dm latency at batch 1: one ``CLIP4DM.detect`` call against the literal per-pair
procedure (``clip4dm._reference.literal_relevance``) — same random model, same pairs, same run.

    python tools/bench/clip4dm_latency.py --shape vit-b-32 --device cpu
    python tools/bench/clip4dm_latency.py --shape vit-b-32 --device cuda --dtype float16 --compile

The variants are timed interleaved, pair by pair, so that a load that comes and goes hits them
alike: literal; ours; ours without text trimming; ours with the towers one after the other
(only where ours runs them side by side: a CPU with two or more threads); ours compiled (with
--compile). Each pair is timed --repeats times per variant; a variant's latency is the mean over
the pairs of each pair's best (best-of-N) time, and its median latency the mean of the per-pair
medians. Speed-ups over the literal procedure compare best-of-N latencies. It also times the
stages of one call, one after the other on all threads (best over all pairs and repeats), to
show where the time goes, and records the load average before and after.
Prints a JSON line (and appends it to --out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clip4dm import CLIP4DM
from clip4dm._reference import literal_relevance
from vl_core import load_clip, resolve_device, resolve_dtype
from vl_core.gradients import batched_grad
from vl_core.testing import make_tiny_hf_clip


def _throughput_module() -> Any:
    """The sibling benchmark, for its inputs (same random pairs as the throughput figures)."""
    path = Path(__file__).with_name("clip4dm_throughput.py")
    spec = importlib.util.spec_from_file_location("clip4dm_throughput", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clock(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def stage_times(
    detector: CLIP4DM, image: Image.Image, text: str, now: Callable[[], float]
) -> dict[str, float]:
    """Seconds spent by each stage of one ``detect`` call, run one stage at a time (the same
    steps as `CLIP4DM._start_relevance` and `_detect_chunk`)."""
    backbone = detector.backbone
    out: dict[str, float] = {}
    t = now()
    pixels = backbone.preprocess([image])
    out["image_preprocess"] = now() - t
    t = now()
    with torch.no_grad():
        image_emb = detector._image_encoder(pixels)
    out["image_encode"] = now() - t
    t = now()
    tokens = backbone.tokenizer([detector.template + text])
    width = detector._text_width(tokens)
    ids = tokens.ids[:, :width].to(backbone.device)
    eot = tokens.eot.to(backbone.device)
    out["tokenize"] = now() - t
    t = now()
    with detector._capture as capture, detector._partial:
        out["capture_setup"] = now() - t
        t = now()
        text_emb = backbone.encode_text(ids)
        cosine = backbone.cosine(image_emb, text_emb)
        out["text_forward"] = now() - t
        t = now()
        attentions = [capture.attentions[name] for name in detector._attention_names]
        grads = batched_grad(cosine, attentions)
        relevance = sum(
            (g[0, :, eot[0]] * a[0, :, eot[0]].detach()).mean(dim=0)
            for g, a in zip(grads, attentions, strict=True)
        )
        out["backward_and_relevance"] = now() - t
        t = now()
    capture.clear()
    out["capture_teardown"] = now() - t
    t = now()
    rel_cpu = torch.as_tensor(relevance).cpu()
    cos_cpu = float(cosine[0].detach())
    out["device_to_host"] = now() - t
    t = now()
    e = int(tokens.eot[0])
    layout = detector._word_layout(text, tokens.ids[0, 1:e].tolist())
    detector._words_to_detection(text, rel_cpu[1:e], layout, cos_cpu, False, None)
    out["word_alignment_and_result"] = now() - t
    out["text_width"] = float(width)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="vit-b-32", choices=["tiny", "vit-b-32", "vit-l-14"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time CLIP4DM(compile=True)")
    parser.add_argument(
        "--no-untrimmed", action="store_true", help="skip the variant without text trimming"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_hf_clip(Path(tmp) / "clip", shape=args.shape)
        backbone = load_clip(f"hf:{model_dir}", device=device, dtype=dtype)
    images, texts = _throughput_module().make_inputs(args.pairs, 1)
    detector = CLIP4DM(backbone, mode="threshold")
    now = _clock(device)

    def literal(i: int) -> None:
        literal_relevance(backbone, images[i], detector.template + texts[i], detector.layers)

    def ours(i: int) -> None:
        detector.detect(images[i], texts[i])

    def untrimmed(i: int) -> None:
        backbone.trims_text_padding = False  # the plain path: the text tower at full width
        try:
            detector.detect(images[i], texts[i])
        finally:
            backbone.trims_text_padding = type(backbone).trims_text_padding

    variants: dict[str, Callable[[int], None]] = {"literal": literal, "ours": ours}
    if not args.no_untrimmed:
        variants["ours_untrimmed"] = untrimmed
    sequential = CLIP4DM(backbone, mode="threshold", parallel_towers=False)
    if detector._tower_threads(torch.zeros(1, 1, device=device)) is not None:

        def ours_sequential(i: int) -> None:
            sequential.detect(images[i], texts[i])

        variants["ours_sequential"] = ours_sequential  # the towers one after the other
    compile_s = None
    if args.compile:
        compiled = CLIP4DM(backbone, mode="threshold", compile=True)
        start = now()
        compiled.detect(images[0], texts[0])  # compiles
        compile_s = round(now() - start, 1)

        def ours_compiled(i: int) -> None:
            compiled.detect(images[i], texts[i])

        variants["ours_compiled"] = ours_compiled

    load_before = os.getloadavg()
    for fn in variants.values():  # warm-up
        fn(0)
    times: dict[str, list[list[float]]] = {name: [[] for _ in images] for name in variants}
    stages: dict[str, float] = {}
    for _ in range(args.repeats):
        for i in range(args.pairs):
            for name, fn in variants.items():
                start = now()
                fn(i)
                times[name][i].append(now() - start)
            for stage, seconds in stage_times(detector, images[i], texts[i], now).items():
                stages[stage] = min(stages.get(stage, float("inf")), seconds)
    load_after = os.getloadavg()

    # the faster paths' outputs against the plain path's (largest score difference, relative to
    # the largest |score| of the pair)
    others: dict[str, CLIP4DM] = {}
    if args.compile:
        others["compiled"] = compiled
    agreement: dict[str, float] = {}
    for i in range(args.pairs):
        fast = detector.detect(images[i], texts[i])
        backbone.trims_text_padding = False
        try:
            plain = detector.detect(images[i], texts[i])
        finally:
            backbone.trims_text_padding = type(backbone).trims_text_padding
        runs = {
            "trimmed": fast,
            "sequential": sequential.detect(images[i], texts[i]),
            **{k: d.detect(images[i], texts[i]) for k, d in others.items()},
        }
        scale = max(abs(w.score) for w in plain.words)
        for name, run in runs.items():
            diff = max(abs(a.score - b.score) for a, b in zip(run.words, plain.words, strict=True))
            agreement[name] = max(agreement.get(name, 0.0), diff / scale)

    best = {name: statistics.fmean(min(t) for t in per_pair) for name, per_pair in times.items()}
    median = {
        name: statistics.fmean(statistics.median(t) for t in per_pair)
        for name, per_pair in times.items()
    }
    report = {
        "benchmark": "clip4dm_latency",
        "shape": args.shape,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": 1,
        "pairs": args.pairs,
        "repeats": args.repeats,
        "seconds_per_pair_best": {k: round(v, 5) for k, v in best.items()},
        "seconds_per_pair_median": {k: round(v, 5) for k, v in median.items()},
        "speedup_vs_literal": {
            k: round(best["literal"] / v, 3) for k, v in best.items() if k != "literal"
        },
        "stages_best_s": {
            k: (int(v) if k == "text_width" else round(v, 5)) for k, v in stages.items()
        },
        "compile_s": compile_s,
        "max_score_diff_vs_plain": {k: float(f"{v:.3g}") for k, v in agreement.items()},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    line = json.dumps(report)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
