"""clip4dm on a shapes world's FOIL and HAT files: ``clip4dm eval``, formatted for the model card.

A thin wrapper around `clip4dm.eval.run_eval` (what ``clip4dm eval`` runs):

- FOIL: ``clip4dm eval foil`` (``most_negative`` mode) on ``foil/<split>.json``. LA = foil
  captions whose lowest word equals the foil word; ``LA_exact`` also requires its position (the
  world's annotations carry ``foil_word_index``); ``LA_by_kind`` and ``pairwise_by_kind`` are
  clip4dm's per-group metrics (groups = the annotations' ``foil_kind``); ``pairwise`` = how often
  the CLIP scores the image's original caption above the foil. AP over all captions, aligned
  captions positive, by F-CLIPScore and by CLIPScore.
- HAT: ``clip4dm eval hat --choose-epsilon-on hat/<val_split>.json`` (``threshold`` mode, epsilon
  chosen on the validation split from `EPSILON_GRID` by HAT LA, then AP). LA = hallucinated
  captions whose predicted phrase occurs among the hallucinated words; ``LA_exact``: at the
  hallucinated positions. AP with hallucinated captions positive, by -F-CLIPScore and -CLIPScore.
  ``hat_val`` is the validation split at the chosen epsilon.

The clip4dm runs (``samples.jsonl``, ``result.json`` per benchmark) go to ``--work`` (resumable),
or to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clip4dm.eval import EvalConfig, EvalError, run_eval
from clip4dm.eval.epsilon import DEFAULT_EPSILON_GRID
from vl_core.cli import Parser, add_quiet_option, positive_int, quiet_libraries, run_command
from vl_core.files import write_json

#: epsilon candidates searched on the validation split: clip4dm's default grid, which spans the
#: attribution scale of small models too
EPSILON_GRID: tuple[float, ...] = DEFAULT_EPSILON_GRID

PROG = "python -m tools.world.evaluate"


class WorldEvalError(RuntimeError):
    """A clip4dm run over the world finished with error rows or missing samples."""


def _run(config: EvalConfig, progress: bool) -> dict[str, Any]:
    """`run_eval` on ``config``; its ``result.json`` content. Raises `WorldEvalError` when a
    sample failed (the world's files are all well-formed, so that is a bug to look at)."""
    summary = run_eval(config, progress=progress)
    assert summary is not None, "a single-process run always returns its summary"
    result = summary.result
    counts = result["counts"]
    if counts["errors"] or counts["missing"]:
        raise WorldEvalError(
            f"{config.benchmark} on {config.data}: {counts['errors']} error rows, "
            f"{counts['missing']} missing (first errors: {result['errors'][:3]}; rows in "
            f"{summary.out_dir})"
        )
    return result


def foil_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The card's FOIL figures from a ``clip4dm eval foil`` ``result.json``."""
    metrics, groups = result["metrics"], result["groups"]
    return {
        "captions": metrics["samples"],
        "foils": metrics["misaligned"],
        "LA": metrics["LA"],
        "LA_exact": metrics.get("LA_exact"),
        "LA_chance": metrics.get("LA_chance"),
        "LA_by_kind": {kind: group["LA"] for kind, group in groups.items()},
        "AP_F-CLIPScore": metrics["AP"]["F-CLIPScore"],
        "AP_CLIPScore": metrics["AP"]["CLIPScore"],
        "pairwise_by_kind": {
            kind: group["pairwise"] for kind, group in groups.items() if "pairwise" in group
        },
    }


def hat_metrics(metrics: Mapping[str, Any], epsilon: float) -> dict[str, Any]:
    """The card's HAT figures from clip4dm's HAT metrics (``result.json``'s ``metrics``, or its
    ``epsilon_selection.validation``) at ``epsilon``."""
    return {
        "captions": metrics["samples"],
        "hallucinated": metrics["misaligned"],
        "epsilon": epsilon,
        "LA": metrics["LA"],
        "LA_exact": metrics.get("LA_exact"),
        "LA_chance": metrics.get("LA_chance"),
        "AP_F-CLIPScore": metrics["AP"]["F-CLIPScore"],
        "AP_CLIPScore": metrics["AP"]["CLIPScore"],
    }


def evaluate(
    model: str,
    root: str | Path,
    *,
    split: str = "test",
    val_split: str = "val",
    batch_size: int = 64,
    device: str = "cpu",
    work: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FOIL (most_negative) and HAT (threshold, epsilon chosen on ``val_split``) metrics of the
    CLIP ``model`` (a clip4dm model name) on the world at ``root``, as ``metrics.json`` records
    them. ``work`` keeps clip4dm's run directories (``foil/``, ``hat/``; a rerun resumes them).

    Raises `clip4dm.eval.EvalError` for a model or file clip4dm cannot use, and
    `WorldEvalError` when a sample could not be scored.
    """
    base = Path(root)
    with contextlib.ExitStack() as stack:
        if work is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="world-evaluate-"))
        runs = Path(work)
        common: dict[str, Any] = {
            "images": str(base / "images"),
            "model": model,
            "device": device,
            "dtype": "float32",
            "batch_size": batch_size,
            "use_references": False,
        }
        foil = _run(
            EvalConfig(
                benchmark="foil",
                data=str(base / "foil" / f"{split}.json"),
                out=str(runs / "foil"),
                **common,
            ),
            progress,
        )
        hat = _run(
            EvalConfig(
                benchmark="hat",
                data=str(base / "hat" / f"{split}.json"),
                out=str(runs / "hat"),
                choose_epsilon_on=str(base / "hat" / f"{val_split}.json"),
                epsilon_grid=EPSILON_GRID,
                **common,
            ),
            progress,
        )
    selection = hat["epsilon_selection"]
    epsilon = float(selection["epsilon"])
    return {
        "model": model,
        "world": str(base),
        "split": split,
        "foil": foil_metrics(foil),
        "hat": {
            **hat_metrics(hat["metrics"], epsilon),
            # clip4dm judges each detection as it is made: LA is LA from the detections
            "LA_from_detections": hat["metrics"]["LA"],
        },
        "hat_val": hat_metrics(selection["validation"], epsilon),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = Parser(
        prog=PROG,
        description="clip4dm on a shapes world: FOIL (most_negative) and HAT (threshold, epsilon "
        "chosen on the val split) through clip4dm eval; prints the metrics as JSON.",
    )
    parser.add_argument("--model", default="hf:shared/models/clip-shapes")
    parser.add_argument("--world", default="shared/world/test-set")
    parser.add_argument("--split", default="test")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--work",
        type=Path,
        help="keep clip4dm's run directories here (a rerun resumes them); default: temporary",
    )
    add_quiet_option(parser)
    parser.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.world.evaluate``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        try:
            with quiet_libraries(args.quiet):
                found = evaluate(
                    args.model,
                    args.world,
                    split=args.split,
                    val_split=args.val_split,
                    batch_size=args.batch_size,
                    device=args.device,
                    work=args.work,
                    progress=not args.quiet,
                )
        except EvalError as exc:
            raise WorldEvalError(str(exc)) from exc
        if args.out is not None:
            write_json(args.out, found, indent=1)
        print(json.dumps(found, indent=1))
        return 0

    return run_command(PROG, command, argv=argv, user_errors=(WorldEvalError,), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
