"""``clip4dm eval BENCHMARK ...``: the subcommand (`add_eval_parser`) and ``python -m clip4dm.eval``.

Errors the user can fix print one line on stderr and exit with status 2; an interrupted run exits
with 130 and resumes when rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from clip4dm.detector import DEFAULT_MODEL
from clip4dm.eval.errors import EvalError
from clip4dm.eval.nli import DEFAULT_NLI_MODEL
from clip4dm.eval.samples import available_benchmarks, get_benchmark

__all__ = ["add_eval_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _benchmark_table() -> str:
    lines = []
    for name in available_benchmarks():
        bench = get_benchmark(name)
        lines.append(f"  {name:<17} {bench.title}: {bench.data_help} [mode {bench.mode}]")
    return "\n".join(lines)


def add_eval_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``eval`` on ``subparsers`` (its ``func`` default returns the exit status)."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate on a benchmark (FOIL, nocaps-FOIL, HAT, SeeTRUE-Feedback, Rich-HF)",
        description="Score every sample of a benchmark, write OUT/samples.jsonl (one row per "
        "sample, resumable) and OUT/result.json (metrics, per-group metrics, configuration, "
        "model, versions). Shard over processes/GPUs with: torchrun --nproc-per-node N -m "
        "clip4dm.eval BENCHMARK ...\n\nbenchmarks:\n" + _benchmark_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("benchmark", metavar="BENCHMARK", help="one of the benchmarks listed above")
    data = parser.add_argument_group("data and output")
    data.add_argument("--data", required=True, help="the benchmark's data (see 'benchmarks' above)")
    data.add_argument("--images", metavar="DIR", help="directory of the benchmark's images")
    data.add_argument(
        "--references",
        metavar="CAPTIONS.json",
        help="foil: COCO captions_val2014.json, for RefCLIPScore",
    )
    data.add_argument("--out", required=True, metavar="DIR", help="output directory")
    data.add_argument("--limit", type=_positive_int, help="only the first N samples")
    data.add_argument(
        "--no-verify-crc",
        dest="verify_crc",
        action="store_false",
        help="richhf: skip the TFRecord CRC32C checks (faster; corruption goes unnoticed)",
    )
    method = parser.add_argument_group("model and method (defaults: the paper's setting)")
    method.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    method.add_argument("--mode", choices=("threshold", "most_negative"))
    method.add_argument("--epsilon", type=float, help="threshold (default -5e-05)")
    method.add_argument("--layers", type=_positive_int, help="last text layers (default 3)")
    method.add_argument("--template", help="prefix of the caption (default 'A photo depicts ')")
    method.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    method.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    method.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    method.add_argument(
        "--no-references",
        dest="use_references",
        action="store_false",
        help="skip RefCLIPScore even where references exist",
    )
    nli = parser.add_argument_group("NLI score (seetrue-feedback; needs clip4dm[nli])")
    nli.add_argument("--nli-model", default=DEFAULT_NLI_MODEL, help=f"default {DEFAULT_NLI_MODEL}")
    nli.add_argument("--no-nli", action="store_true", help="skip the NLI score")
    nli.add_argument("--nli-batch-size", type=_positive_int, default=16, help="default 16")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_command)


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_metric(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


def run_command(args: argparse.Namespace) -> int:
    """The ``eval`` subcommand; returns the exit status."""
    from clip4dm.eval.config import EvalConfig
    from clip4dm.eval.runner import run_eval

    try:
        bench = get_benchmark(args.benchmark)
        config = EvalConfig(
            benchmark=bench.name,
            data=args.data,
            out=args.out,
            images=args.images,
            references=args.references,
            model=args.model,
            mode=args.mode,
            epsilon=args.epsilon,
            layers=args.layers,
            template=args.template,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            use_references=args.use_references,
            nli_model=None if args.no_nli else args.nli_model,
            nli_batch_size=args.nli_batch_size,
            verify_crc=args.verify_crc,
            limit=args.limit,
        )
        summary = run_eval(config, progress=not args.no_progress)
    except (EvalError, ValueError) as exc:
        print(f"clip4dm eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"clip4dm eval: interrupted; the rows written so far are kept in {args.out}: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary is None:  # a rank other than 0 of a sharded run
        return 0
    for note in summary.notes:
        print(f"clip4dm eval: {note}", file=sys.stderr)
    result = summary.result
    counts = result["counts"]
    print(
        f"clip4dm eval {result['benchmark']}: {counts['samples']} samples, "
        f"{counts['scored']} scored, {counts['errors']} errors "
        f"({summary.scored + summary.errors} computed now, {summary.skipped} already done)"
    )
    for name, value in result["metrics"].items():
        if name not in ("samples", "aligned", "misaligned", "tp", "fp", "fn"):
            print(f"  {name:<10} {_format_metric(value)}")
    for group, metrics in result["groups"].items():
        shown = {k: v for k, v in metrics.items() if k in ("LA", "AP", "NLI")}
        print(f"  [{group}] " + json.dumps(shown))
    print(f"clip4dm eval: wrote {summary.out_dir / 'result.json'}")
    return 0


def _join_negative_numbers(argv: Sequence[str]) -> list[str]:
    """``--epsilon -5e-5`` → ``--epsilon=-5e-5`` (argparse takes "-5e-5" for an option)."""
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        arg = items[index]
        if arg == "--epsilon" and index + 1 < len(items):
            try:
                float(items[index + 1])
            except ValueError:
                pass
            else:
                out.append(f"{arg}={items[index + 1]}")
                index += 2
                continue
        out.append(arg)
        index += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clip4dm.eval BENCHMARK ...`` (what ``torchrun ... -m clip4dm.eval`` runs)."""
    parser = argparse.ArgumentParser(prog="clip4dm")
    subparsers = parser.add_subparsers(dest="command")
    add_eval_parser(subparsers)
    args = parser.parse_args(
        ["eval", *_join_negative_numbers(sys.argv[1:] if argv is None else argv)]
    )
    return int(args.func(args))
