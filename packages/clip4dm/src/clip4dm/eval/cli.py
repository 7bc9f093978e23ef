"""``clip4dm eval BENCHMARK ...``: the subcommand (`add_eval_parser`) and ``python -m clip4dm.eval``.

The shared dialect of `vl_core.cli`: errors the user can fix print one line on stderr and exit
with status 2; a run that finished with error rows exits with 1; an interrupted run exits with 130
after printing the command that resumes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from clip4dm.eval.nli import DEFAULT_NLI_MODEL
from clip4dm.eval.samples import available_benchmarks, get_benchmark
from vl_core.cli import (
    EXIT_OK,
    Parser,
    UsageError,
    deprecated_alias,
    positive_int,
    report_error_rows,
)

__all__ = ["add_eval_parser", "eval_command", "main"]


def _epsilon_grid(value: str) -> tuple[float, ...]:
    """``"-1e-5,-5e-5,0"`` → the finite numbers, in order."""
    try:
        grid = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        grid = ()
    if not grid or not all(math.isfinite(e) for e in grid):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as -1e-5,-5e-5,0, got {value!r}"
        )
    return grid


def _benchmark_table() -> str:
    lines = []
    for name in available_benchmarks():
        bench = get_benchmark(name)
        lines.append(f"  {name:<17} {bench.title}: {bench.data_help} [mode {bench.mode}]")
    return "\n".join(lines)


def add_eval_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``eval`` on ``subparsers`` (its ``func`` default, `eval_command`, returns the
    exit status)."""
    from clip4dm.cli import add_model_options, add_run_options

    parser = subparsers.add_parser(
        "eval",
        help="evaluate on a benchmark (FOIL, nocaps-FOIL, HAT, SeeTRUE-Feedback, Rich-HF)",
        description="Score every sample of a benchmark, write OUT/samples.jsonl (one row per "
        "sample, resumable) and OUT/result.json (metrics, per-group metrics, configuration, "
        "model, versions). Shard over processes/GPUs with: torchrun --nproc-per-node N -m "
        "clip4dm.eval BENCHMARK ... Exit status: 0 done, 1 some samples are error rows, 2 usage "
        "error, 130 interrupted.\n\nbenchmarks:\n" + _benchmark_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("benchmark", metavar="BENCHMARK", help="one of the benchmarks listed above")
    data = parser.add_argument_group("data and output")
    data.add_argument("--data", required=True, help="the benchmark's data (see 'benchmarks' above)")
    data.add_argument(
        "--images-root", dest="images", metavar="DIR", help="directory of the benchmark's images"
    )
    deprecated_alias(data, "--images", "--images-root", dest="images")
    data.add_argument(
        "--references",
        metavar="CAPTIONS.json",
        help="foil: COCO captions_val2014.json, for RefCLIPScore",
    )
    data.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory (rerunning resumes; OUT/run.json records the inputs and settings)",
    )
    data.add_argument(
        "--overwrite",
        action="store_true",
        help="start OUT over (also when it holds a run over other inputs or settings)",
    )
    data.add_argument("--limit", type=positive_int, help="only the first N samples")
    data.add_argument(
        "--no-verify-crc",
        dest="verify_crc",
        action="store_false",
        help="richhf: skip the TFRecord CRC32C checks (faster; corruption goes unnoticed)",
    )
    method = add_model_options(
        parser, defaults=False, title="model and method (defaults: the paper's setting)"
    )
    method.add_argument(
        "--choose-epsilon-on",
        metavar="VAL_DATA",
        help="choose the threshold epsilon on this validation split of the benchmark (same "
        "--images-root; scored into OUT/validation/) from --epsilon-grid: best LA, then best "
        "F-CLIPScore AP; result.json records the grid and the choice (epsilon_selection)",
    )
    method.add_argument(
        "--epsilon-grid",
        type=_epsilon_grid,
        metavar="E1,E2,...",
        help="candidates for --choose-epsilon-on (default -1e-6,-2e-6,-5e-6,...,-5e-2,0)",
    )
    method.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    method.add_argument(
        "--no-references",
        dest="use_references",
        action="store_false",
        help="skip RefCLIPScore even where references exist",
    )
    nli = parser.add_argument_group("NLI score (seetrue-feedback; needs clip4dm[nli])")
    nli.add_argument("--nli-model", default=DEFAULT_NLI_MODEL, help=f"default {DEFAULT_NLI_MODEL}")
    nli.add_argument("--no-nli", action="store_true", help="skip the NLI score")
    nli.add_argument("--nli-batch-size", type=positive_int, default=16, help="default 16")
    add_run_options(parser, no_progress_alias=True)
    parser.set_defaults(func=eval_command)


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_metric(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


def eval_command(args: argparse.Namespace) -> int:
    """The ``eval`` subcommand; returns the exit status: 0, or 1 when some samples are error rows.

    Raises `vl_core.cli.UsageError` for an unknown benchmark, `clip4dm.eval.EvalError` when the
    run cannot start or finish (both reported in one line by `clip4dm.cli.run`).
    """
    from clip4dm.eval.config import EvalConfig
    from clip4dm.eval.runner import run_eval

    try:
        bench = get_benchmark(args.benchmark)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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
        choose_epsilon_on=args.choose_epsilon_on,
        epsilon_grid=args.epsilon_grid,
        overwrite=args.overwrite,
    )
    summary = run_eval(config, progress=not args.quiet)
    if summary is None:  # a rank other than 0 of a sharded run
        return EXIT_OK
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
    return report_error_rows(
        "clip4dm eval",
        summary.error_rows,
        "sample(s) could not be scored",
        f": see 'errors' in {summary.out_dir / 'result.json'}; fix them and rerun the command to "
        "retry them",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clip4dm.eval BENCHMARK ...`` (what ``torchrun ... -m clip4dm.eval`` runs);
    returns the exit status, as ``clip4dm eval`` does."""
    from clip4dm.cli import join_negative_numbers, run

    words = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="clip4dm")
    subparsers = parser.add_subparsers(dest="command")
    add_eval_parser(subparsers)
    args = parser.parse_args(["eval", *join_negative_numbers(words)])
    return run(args, words)
