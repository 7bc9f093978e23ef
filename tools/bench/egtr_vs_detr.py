"""egtr against its own detector: the whole EGTR model vs transformers' ``DeformableDetrModel``.

    python tools/bench/egtr_vs_detr.py                                # CPU, 600x1000, best of 5
    python tools/bench/egtr_vs_detr.py --quick                        # 320x512, best of 2
    python tools/bench/egtr_vs_detr.py --device cuda --dtype bfloat16 --repeats 20

One process builds the paper's Visual Genome model (``egtr_visual_genome(weights=None)``: ResNet-50,
6+6 layers, d 256, 200 queries; random weights, and random frozen batch-norm statistics of the size
trained ResNets have) and transformers' ``DeformableDetrModel`` built from the same configuration
with EGTR's detector weights loaded into it (strictly). Variants, timed interleaved (the order
rotates each round, so load from other jobs hits all alike), forward only under
``torch.inference_mode``, batch 1, one random ``[1, 3, H, W]`` input (preprocessing not timed):

- ``egtr``: the whole EGTR model (detector, relation head, frequency bias) with its fast
  inference path (the default, :mod:`egtr.deformable`);
- ``detr``: transformers' ``DeformableDetrModel`` (the detector alone, transformers' code);
- ``egtr_plain``: the whole EGTR model with ``set_fast_inference(False)`` (transformers' detector
  code plus the relation head; what EGTR cost before);
- ``egtr_compiled`` (only with ``--compile``): ``egtr`` with :meth:`EGTRForSceneGraphGeneration.compile_for_inference`;
  its first call (compilation) is timed separately.

Reports the best and median of ``--repeats`` timed runs of each after a warm-up (wall clock; on CPU
also the process CPU time), the ratios against ``detr`` (of the best times, of the best CPU times,
and the median of the per-round ratios) and the largest difference between EGTR's
detector outputs and transformers' (encoder output, decoder hidden states). The CPU load average
is recorded at the start and the end (other jobs on the machine inflate absolute times; the
ratios compare interleaved runs). Target (issue 16): ``egtr`` at most 0.65x ``detr`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TARGET_RATIO = 0.65


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--image-size", help="HxW of the input (default 600x1000; quick 320x512)")
    parser.add_argument("--repeats", type=int, help="timed runs per variant (default 5; quick 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--no-plain", action="store_true", help="skip the egtr_plain variant")
    parser.add_argument("--quick", action="store_true", help="smaller input, fewer repeats")
    parser.add_argument("--out", type=Path, help="also write the summary JSON here")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.image_size is None:
        args.image_size = "320x512" if args.quick else "600x1000"
    try:
        height, width = (int(v) for v in str(args.image_size).lower().split("x"))
    except ValueError:
        parser.error(f"--image-size must be HxW, got {args.image_size!r}")
    if height < 32 or width < 32:
        parser.error("--image-size must be at least 32x32")
    args.hw = (height, width)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    return args


def _realistic_frozen_batch_norms(model: torch.nn.Module) -> None:
    """Frozen batch norms with scale and shift of a trained ResNet's size (a fresh model has the
    identity, which would make folding them trivially exact)."""
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrFrozenBatchNorm2d,
    )

    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformableDetrFrozenBatchNorm2d):
                n = module.weight.shape[0]
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)


def build(args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The variants (name -> forward) and the facts of the comparison."""
    import copy

    from transformers import DeformableDetrModel

    from egtr import egtr_visual_genome

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    egtr = egtr_visual_genome(weights=None)
    _realistic_frozen_batch_norms(egtr)
    detr = DeformableDetrModel(egtr.config)
    detr.load_state_dict(egtr.model.state_dict(), strict=True)
    models: dict[str, torch.nn.Module] = {"egtr": egtr, "detr": detr}
    if not args.no_plain:
        plain = copy.deepcopy(egtr)
        plain.set_fast_inference(False)
        models["egtr_plain"] = plain
    for model in models.values():
        model.to(device=device, dtype=dtype)
        model.eval()
    height, width = args.hw
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, height, width, generator=gen).to(device, dtype)
    mask = torch.ones(1, height, width, dtype=torch.long, device=device)

    variants: dict[str, Callable[[], Any]] = {
        "egtr": lambda: egtr(pixels, mask),
        "detr": lambda: detr(pixel_values=pixels, pixel_mask=mask),
    }
    if "egtr_plain" in models:
        plain_model = models["egtr_plain"]
        variants["egtr_plain"] = lambda: plain_model(pixels, mask)

    facts: dict[str, Any] = {"image_hw": [height, width], "batch": 1}
    with torch.inference_mode():
        ours = egtr.model(pixel_values=pixels, pixel_mask=mask)
        theirs = detr(pixel_values=pixels, pixel_mask=mask)
        facts["max_abs_diff_vs_transformers"] = {
            name: (getattr(ours, name).float() - getattr(theirs, name).float()).abs().max().item()
            for name in ("encoder_last_hidden_state", "last_hidden_state")
        }
        if args.compile:
            compiled = copy.deepcopy(egtr)
            compiled.compile_for_inference()
            sync(args.device)
            start = time.perf_counter()
            out = compiled(pixels, mask)
            sync(args.device)
            facts["compile_first_call_s"] = round(time.perf_counter() - start, 2)
            reference = egtr(pixels, mask)
            facts["compiled_max_abs_diff"] = {
                name: (getattr(out, name).float() - getattr(reference, name).float())
                .abs()
                .max()
                .item()
                for name in ("logits", "pred_boxes", "rel_logits")
            }
            variants["egtr_compiled"] = lambda: compiled(pixels, mask)
    return variants, facts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, variants: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up
            for _ in range(3 if args.device.startswith("cuda") else 1):
                variants[name]()
        sync(args.device)
        for round_index in range(args.repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                sync(args.device)
                start_cpu, start = time.process_time(), time.perf_counter()
                out = variants[name]()
                sync(args.device)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                del out
    results: dict[str, Any] = {}
    for name in names:
        results[name] = {
            "best_s": round(min(wall[name]), 4),
            "median_s": round(statistics.median(wall[name]), 4),
            "times_s": [round(t, 4) for t in wall[name]],
        }
        if not args.device.startswith("cuda"):
            results[name]["best_cpu_s"] = round(min(cpu[name]), 4)
    return results


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
    }
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    variants, facts = build(args)
    results = measure(args, variants)
    detr = results["detr"]
    ratios = {
        f"{name}_over_detr": round(result["best_s"] / detr["best_s"], 3)
        for name, result in results.items()
        if name != "detr"
    }
    # per round (each variant ran once per round, close in time): less sensitive to load spikes
    ratios.update(
        {
            f"{name}_over_detr_paired_median": round(
                statistics.median(
                    t / d for t, d in zip(result["times_s"], detr["times_s"], strict=True)
                ),
                3,
            )
            for name, result in results.items()
            if name != "detr"
        }
    )
    if "best_cpu_s" in detr:
        ratios.update(
            {
                f"{name}_over_detr_cpu_time": round(result["best_cpu_s"] / detr["best_cpu_s"], 3)
                for name, result in results.items()
                if name != "detr"
            }
        )
    summary = {
        "bench": "egtr_vs_detr",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            **machine_facts(args),
            "load_avg_start": load_start,
            "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "settings": {"repeats": args.repeats, "compile": args.compile},
        **facts,
        "results": results,
        "ratios": ratios,
        "target": {
            "egtr_over_detr_at_most": TARGET_RATIO,
            "met": ratios["egtr_over_detr"] <= TARGET_RATIO,
        },
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
