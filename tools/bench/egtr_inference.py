"""egtr inference: the factorised relation head against the literal pair-tensor construction.

    python tools/bench/egtr_inference.py                      # CPU, paper sizes
    python tools/bench/egtr_inference.py --quick              # smaller, for a smoke run
    python tools/bench/egtr_inference.py --device cuda --out egtr-bench.json

Two parts, each run with ``relation_head_impl`` = ``factorised`` (ours) and ``literal`` (the
``[B, N, N, L+1, 2d]`` pair tensor of the definition), on the same random weights and inputs:

- ``head``: the relation head alone, N = 200 queries, d = 256, L = 6 decoder layers, P = 50.
- ``model``: the whole VG model (``egtr_visual_genome(weights=None)``, random weights), batch 1,
  one ``[1, 3, 600, 1000]`` input: the largest image of the paper's 600/1000 FPS protocol
  (shorter side 600, longer side at most 1000); preprocessing is not timed.

Everything runs forward only under ``torch.inference_mode``. Latency: best (and median) of
``--repeats`` runs after one warm-up, both implementations interleaved in one process, so load
from other jobs hits both alike. Peak memory: each (part, implementation) in a fresh process;
on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
allocated before the forward; on CPU the peak of live torch allocations during a forward from
``torch.profiler`` (``profile_memory=True``: the running sum of its allocation/free records), and
as a cross-check the growth of the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``) over the first forward, run without the profiler (tracemalloc would
not see torch's allocations). Prints one JSON line per measurement and a summary
line with the ratios (literal / ours) and the targets: relation-head peak memory at least 5x
lower than literal, whole-model latency no worse.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

IMPLS = ("factorised", "literal")
PARTS = ("head", "model")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_MEMORY_METHOD = (
    "torch.profiler(profile_memory=True): peak of the running sum of CPU allocation/free "
    "records during one forward; cross-check: growth of the process's peak RSS (VmHWM, reset "
    "via /proc/self/clear_refs) over the first forward of a fresh process (no profiler)"
)
CUDA_MEMORY_METHOD = (
    "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated "
    "before the forward, in a fresh process"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--queries", type=int, help="N of the head part (default 200; quick 100)")
    parser.add_argument(
        "--image-size", help="HxW of the model input (default 600x1000; quick 320x512)"
    )
    parser.add_argument("--repeats", type=int, help="timed runs per implementation (default 3)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    # internal: one measurement in this process (the parent starts these)
    parser.add_argument("--worker", choices=("memory", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.queries is None:
        args.queries = 100 if args.quick else 200
    if args.image_size is None:
        args.image_size = "320x512" if args.quick else "600x1000"
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def image_hw(args: argparse.Namespace) -> tuple[int, int]:
    height, width = (int(v) for v in str(args.image_size).lower().split("x"))
    return height, width


# --- the two cases: a forward function taking the implementation name -------------------------


def head_case(args: argparse.Namespace) -> Callable[[str], tuple[torch.Tensor, torch.Tensor]]:
    """The relation head of the VG configuration on random queries/keys/hidden states."""
    from egtr import EGTRConfig
    from egtr.relation_head import RelationHead, literal_relation_logits

    config = EGTRConfig.visual_genome()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    d, layers, n = config.d_model, config.decoder_layers, args.queries
    head = RelationHead(d, layers, config.num_rel_labels).to(device=device, dtype=dtype).eval()
    queries = torch.randn(1, layers, n, d, device=device, dtype=dtype)
    keys = torch.randn(1, layers, n, d, device=device, dtype=dtype)
    hidden = torch.randn(1, n, d, device=device, dtype=dtype)

    def forward(impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        if impl == "literal":
            return literal_relation_logits(head, queries, keys, hidden)
        rel, conn = head(queries, keys, hidden)
        return rel, conn

    return forward


def model_case(args: argparse.Namespace) -> Callable[[str], tuple[torch.Tensor, torch.Tensor]]:
    """The whole VG model (random weights) on one random image-sized input."""
    from egtr import egtr_visual_genome

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    model = egtr_visual_genome(weights=None)
    model.to(device=device, dtype=dtype)  # type: ignore[call-arg]
    model.eval()  # type: ignore[no-untyped-call]
    height, width = image_hw(args)
    pixels = torch.randn(1, 3, height, width, device=device, dtype=dtype)
    mask = torch.ones(1, height, width, dtype=torch.long, device=device)

    def forward(impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(pixels, mask, relation_head_impl=impl)
        assert out.rel_logits is not None
        assert out.connectivity_logits is not None
        return out.rel_logits, out.connectivity_logits

    return forward


def build_case(args: argparse.Namespace) -> Callable[[str], tuple[torch.Tensor, torch.Tensor]]:
    return head_case(args) if args.part == "head" else model_case(args)


def shape_facts(args: argparse.Namespace, part: str) -> dict[str, Any]:
    from egtr import EGTRConfig

    config = EGTRConfig.visual_genome()
    n = args.queries if part == "head" else config.num_queries
    element = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    facts: dict[str, Any] = {
        "N": n,
        "d": config.d_model,
        "L": config.decoder_layers,
        "P": config.num_rel_labels,
        "batch": 1,
        # the literal construction's pair tensor [B, N, N, L+1, 2d]
        "pair_tensor_bytes": n * n * (config.decoder_layers + 1) * 2 * config.d_model * element,
    }
    if part == "model":
        facts["image_hw"] = list(image_hw(args))
    return facts


# --- measurements ------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _profiled_peak(prof: Any) -> int:
    """Peak of live bytes from the profiler's CPU allocation (+) / free (-) records, in time order."""
    cpu = torch.autograd.DeviceType.CPU  # type: ignore[attr-defined]
    records = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    ]
    live = peak = 0
    for event in sorted(records, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    forward = build_case(args)
    gc.collect()
    record: dict[str, Any] = {"measure": "peak_memory"}
    with torch.inference_mode():
        if args.device.startswith("cuda"):
            record["method"] = CUDA_MEMORY_METHOD
            sync(args.device)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = forward(args.impl)
            sync(args.device)
            record["forward_peak_bytes"] = torch.cuda.max_memory_allocated() - before
            record["peak_bytes"] = torch.cuda.max_memory_allocated()
            del out
            return record
        from torch.profiler import ProfilerActivity, profile

        record["method"] = CPU_MEMORY_METHOD
        # 1) growth of the process's peak RSS over its first forward (no profiler running:
        #    its buffers would count too)
        rss_before = _proc_status_bytes("VmRSS")
        rss_reset = _reset_peak_rss()
        out = forward(args.impl)
        del out
        hwm = _proc_status_bytes("VmHWM")
        record["rss_peak_delta_bytes"] = (
            hwm - rss_before if rss_reset and hwm is not None and rss_before is not None else None
        )
        # 2) torch allocations seen by the profiler during a second forward
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = forward(args.impl)
            del out
        record["forward_peak_bytes"] = _profiled_peak(prof)
    return record


def measure_latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both implementations in this process, interleaved (alternating order each round)."""
    forward = build_case(args)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    with torch.inference_mode():
        results = {impl: forward(impl) for impl in IMPLS}  # warm-up, and an agreement check
        diff = max(
            (a.float() - b.float()).abs().max().item()
            for a, b in zip(results["factorised"], results["literal"], strict=True)
        )
        del results
        for round_index in range(args.repeats):
            order = IMPLS if round_index % 2 == 0 else IMPLS[::-1]
            for impl in order:
                sync(args.device)
                start = time.perf_counter()
                out = forward(impl)
                sync(args.device)
                times[impl].append(time.perf_counter() - start)
                del out
    return [
        {
            "measure": "latency",
            "impl": impl,
            "best_s": min(times[impl]),
            "median_s": statistics.median(times[impl]),
            "times_s": [round(t, 4) for t in times[impl]],
            "max_abs_diff_vs_other_impl": diff,
        }
        for impl in IMPLS
    ]


def run_worker(args: argparse.Namespace) -> None:
    if args.worker == "memory":
        records = [{**measure_memory(args), "impl": args.impl}]
    else:
        records = measure_latency(args)
    for record in records:
        print(json.dumps({"part": args.part, **record}), flush=True)


# --- orchestration -----------------------------------------------------------------------------


def _spawn(
    args: argparse.Namespace, worker: str, part: str, impl: str | None
) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--part",
        part,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--queries",
        str(args.queries),
        "--image-size",
        args.image_size,
        "--repeats",
        str(args.repeats),
    ]
    if impl is not None:
        command += ["--impl", impl]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {worker}/{part}/{impl} failed with status {proc.returncode}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    facts: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    def get(part: str, measure: str, impl: str, key: str) -> Any:
        for r in records:
            if (r["part"], r["measure"], r["impl"]) == (part, measure, impl):
                return r.get(key)
        return None

    ratios: dict[str, Any] = {}
    for part in PARTS:
        for key, measure, field in (
            ("memory", "peak_memory", "forward_peak_bytes"),
            ("rss_memory", "peak_memory", "rss_peak_delta_bytes"),
            ("latency", "latency", "best_s"),
        ):
            value = _ratio(
                get(part, measure, "literal", field), get(part, measure, "factorised", field)
            )
            if value is not None:
                ratios[f"{part}_{key}_literal_over_ours"] = value
    targets: dict[str, Any] = {}
    if "head_memory_literal_over_ours" in ratios:
        targets["head_peak_memory_at_least_5x_lower"] = ratios["head_memory_literal_over_ours"] >= 5
    if "model_latency_literal_over_ours" in ratios:
        targets["model_latency_no_worse"] = ratios["model_latency_literal_over_ours"] >= 1.0
    return {"ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    records: list[dict[str, Any]] = []
    facts = machine_facts(args)
    start = time.perf_counter()
    for part in args.parts:
        shapes = shape_facts(args, part)
        jobs: list[tuple[str, str | None]] = [("memory", impl) for impl in IMPLS]
        jobs.append(("latency", None))
        for worker, impl in jobs:
            for record in _spawn(args, worker, part, impl):
                record = {**record, **shapes, "device": args.device, "dtype": args.dtype}
                print(json.dumps(record), flush=True)
                records.append(record)
    cuda = args.device.startswith("cuda")
    summary = {
        "bench": "egtr_inference",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": facts,
        "settings": {
            "queries_head": args.queries,
            "image_size": args.image_size,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "memory_method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD,
        "measurements": records,
        **summarise(records),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps({"summary": {k: summary[k] for k in ("ratios", "targets", "wall_s")}}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
