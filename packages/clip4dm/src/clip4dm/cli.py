"""The ``clip4dm`` command line: ``detect`` (one pair or a pairs file), ``visualize``, ``info``.

Errors the user can fix (a missing or unreadable image, an empty caption, a model that cannot be
loaded here) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4dm import __version__
from clip4dm.detector import DEFAULT_EPSILON, DEFAULT_LAYERS, DEFAULT_MODEL, DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from PIL import Image

    from clip4dm.detector import CLIP4DM
    from clip4dm.results import Detection
    from clip4dm.visualize import DetectionData
    from vl_core.images import ImageSource

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem to report in one line (exit status 2)."""


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


# -- shared helpers -----------------------------------------------------------------------------


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and method")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hf:<hub id or dir>, openclip:<arch>/<tag or checkpoint> or openclip:<dir>, "
        f"or a local HF directory (default: {DEFAULT_MODEL})",
    )
    group.add_argument(
        "--mode",
        choices=("threshold", "most_negative"),
        default="threshold",
        help="threshold: every word scoring below --epsilon; most_negative: the lowest-scoring "
        "word (default: threshold)",
    )
    group.add_argument(
        "--epsilon",
        type=float,
        default=DEFAULT_EPSILON,
        help=f"threshold on word scores for --mode threshold (default: {DEFAULT_EPSILON:g})",
    )
    group.add_argument(
        "--layers",
        type=_positive_int,
        default=DEFAULT_LAYERS,
        help=f"number of last text-encoder layers to attribute over (default: {DEFAULT_LAYERS})",
    )
    group.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        help=f"prefix encoded before the caption, not reported (default: {DEFAULT_TEMPLATE!r})",
    )
    group.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)"
    )
    group.add_argument(
        "--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default: auto)"
    )


def _build_detector(args: argparse.Namespace) -> CLIP4DM:
    """The detector the options ask for; loading failures become a `CliError`."""
    from clip4dm.detector import CLIP4DM

    try:
        return CLIP4DM(
            args.model,
            mode=args.mode,
            epsilon=args.epsilon,
            layers=args.layers,
            template=args.template,
            device=args.device,
            dtype=args.dtype,
        )
    except (OSError, ValueError, TypeError) as exc:  # incl. vl_core.hub.ModelNotAvailableError
        raise CliError(str(exc)) from exc


def _load_image(source: str) -> Image.Image:
    from vl_core.images import load_image

    try:
        return load_image(source)
    except (ValueError, OSError) as exc:  # vl_core.images.ImageLoadError is a ValueError
        raise CliError(str(exc)) from exc


def _check_text(text: str) -> str:
    if not text.strip():
        raise CliError("the text is empty or whitespace-only: give the caption to check")
    return text


def _detect_one(args: argparse.Namespace, image: Image.Image, text: str) -> Detection:
    detector = _build_detector(args)
    try:
        return detector.detect(image, text)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


# -- detect -------------------------------------------------------------------------------------


def format_table(detection: Detection) -> str:
    """The per-word table, the selected words and the caption-level scores, as plain text."""
    selected = {w.index for w in detection.misaligned}
    words = [(w.word, f"{w.score:+.3e}", w.index in selected) for w in detection.words]
    words += [(word, "-", False) for word in detection.unscored_words]
    width = min(max([len(word) for word, _, _ in words] + [4]), 40)
    lines = [f"{'#':>3}  {'word':<{width}}  {'score':>10}"]
    for number, (word, score, marked) in enumerate(words):
        marker = "  <-- misaligned" if marked else ""
        if score == "-":
            marker = "  (not scored)"
        lines.append(f"{number:>3}  {word:<{width}}  {score:>10}{marker}")
    if detection.truncated:
        lines.append(
            f"note: the caption is longer than the model's context; "
            f"{len(detection.unscored_words)} word(s) at the end were not scored"
        )
    names = ", ".join(w.word for w in detection.misaligned) or "none"
    lines += [
        "",
        f"misaligned   {names}",
        f"CLIPScore    {detection.clip_score:.4f}",
        f"F-CLIPScore  {detection.f_clip_score:.4e}",
    ]
    return "\n".join(lines)


def _cmd_detect(args: argparse.Namespace) -> int:
    if args.pairs is not None:
        return _detect_pairs(args)
    if args.out is not None or args.images_root is not None:
        raise CliError("--out and --images-root go with --pairs (batch mode)")
    if args.image is None or args.text is None:
        raise CliError("give IMAGE and TEXT, or --pairs PAIRS.jsonl --out RESULTS.jsonl")
    text = _check_text(args.text)
    image = _load_image(args.image)
    detection = _detect_one(args, image, text)
    if args.json:
        print(json.dumps(detection.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_table(detection))
    return 0


def _detect_pairs(args: argparse.Namespace) -> int:
    from clip4dm.batch import PairsError, run_pairs
    from clip4dm.jsonl import ResultsFileError

    if args.image is not None or args.text is not None:
        raise CliError("give either IMAGE TEXT or --pairs, not both")
    if args.out is None:
        raise CliError("--pairs needs --out RESULTS.jsonl")
    if args.json:
        raise CliError("--json is for a single pair; --pairs always writes JSON Lines")
    if Path(args.out).resolve() == Path(args.pairs).resolve():
        raise CliError("--out must not be the pairs file itself")
    try:
        summary = run_pairs(
            args.pairs,
            args.out,
            lambda: _build_detector(args),
            batch_size=args.batch_size,
            images_root=args.images_root,
            progress=not args.no_progress,
        )
    except (PairsError, ResultsFileError) as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        print(
            f"clip4dm: interrupted; the rows written so far are kept in {args.out}: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.retried:
        print(
            f"clip4dm: retried {summary.retried} error row(s) of the previous run", file=sys.stderr
        )
    for note in summary.dropped:
        print(f"clip4dm: dropped unusable output {note}; its pair was recomputed", file=sys.stderr)
    print(f"clip4dm: {summary} -> {args.out}")
    return 0


# -- visualize ----------------------------------------------------------------------------------


def _output_kind(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".png":
        return "png"
    raise CliError(f"--out must end in .html or .png, got {out!r}")


def _read_results(path: str, ids: Sequence[str] | None) -> tuple[list[dict[str, Any]], int]:
    """Good rows of a results file (optionally only the given ids), and the number skipped."""
    try:
        raw_lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CliError(f"results file {path!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read results file {path!r}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    skipped = 0
    for raw in raw_lines:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(row, dict) or "error" in row or "words" not in row:
            skipped += 1
            continue
        if ids is None or str(row.get("id")) in ids:
            rows.append(row)
    if ids is not None:
        found = {str(row.get("id")) for row in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise CliError(f"no result row with id {', '.join(missing)} in {path}")
    if not rows:
        raise CliError(f"no result rows to show in {path}")
    return rows, skipped


def _row_image(row: dict[str, Any], results: str, images_root: str | None) -> Path | None:
    """The existing image file of a results row, if any."""
    image = row.get("image")
    if not isinstance(image, str) or not image:
        return None
    path = Path(image).expanduser()
    if path.is_absolute():
        candidates = [path]
    elif images_root is not None:
        candidates = [Path(images_root) / path]
    else:
        candidates = [path, Path(results).parent / path]
    return next((c for c in candidates if c.is_file()), None)


def _require_matplotlib() -> None:
    from clip4dm.visualize import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as exc:
        raise CliError(str(exc)) from exc


def _cmd_visualize(args: argparse.Namespace) -> int:
    from clip4dm import visualize

    kind = _output_kind(args.out)
    if args.results is not None:
        return _visualize_results(args, kind)
    if args.ids or args.images_root is not None:
        raise CliError("--id and --images-root go with --from RESULTS.jsonl")
    if args.image is None or args.text is None:
        raise CliError("give IMAGE and TEXT, or --from RESULTS.jsonl")
    text = _check_text(args.text)
    image = _load_image(args.image)
    if kind == "png":
        _require_matplotlib()
    detection = _detect_one(args, image, text)
    if kind == "html":
        visualize.save_html(image, detection, args.out, title=f"clip4dm: {Path(args.image).name}")
    else:
        visualize.save_figure(image, detection, args.out)
    print(f"clip4dm: wrote {args.out}")
    return 0


def _visualize_results(args: argparse.Namespace, kind: str) -> int:
    from clip4dm import visualize

    if args.image is not None or args.text is not None:
        raise CliError("give either IMAGE TEXT or --from RESULTS.jsonl, not both")
    rows, skipped = _read_results(args.results, args.ids or None)
    if kind == "png":
        if len(rows) != 1:
            raise CliError(
                f"a PNG shows one pair and {args.results} has {len(rows)}: pick one with --id"
            )
        _require_matplotlib()
        row = rows[0]
        image = _row_image(row, args.results, args.images_root)
        if image is None:
            raise CliError(f"image {row.get('image')!r} of id {row.get('id')!r} not found")
        visualize.save_figure(_load_image(str(image)), row, args.out)
    else:
        entries: list[tuple[ImageSource | None, DetectionData, str | None]] = []
        for row in rows:
            image = _row_image(row, args.results, args.images_root)
            if image is None:
                print(
                    f"clip4dm: image {row.get('image')!r} not found; shown without it",
                    file=sys.stderr,
                )
            entries.append((image, row, f"{row.get('id')} — {row.get('image', '')}"))
        page = visualize.render_html_report(entries, title=f"clip4dm: {Path(args.results).name}")
        Path(args.out).write_text(page, encoding="utf-8")
    note = f" ({skipped} error or invalid row(s) skipped)" if skipped else ""
    print(f"clip4dm: wrote {args.out}{note}")
    return 0


# -- info ---------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from vl_core import environment_report

    print(
        json.dumps(
            environment_report(("clip4dm", "vl-core", "torch", "transformers", "open_clip_torch")),
            indent=2,
        )
    )
    return 0


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip4dm",
        description="Find the words of a caption that do not match the image (CLIP4DM, F-CLIPScore).",
    )
    parser.add_argument("--version", action="version", version=f"clip4dm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    detect = sub.add_parser(
        "detect",
        help="score each word of a caption against an image (one pair, or a pairs file)",
        description="Score each word of TEXT against IMAGE and mark the misaligned words; or, "
        "with --pairs, score a JSON Lines file of pairs into --out (resumable).",
        usage="clip4dm detect IMAGE TEXT [options] [--json]\n"
        "       clip4dm detect --pairs PAIRS.jsonl --out RESULTS.jsonl [options]",
    )
    detect.add_argument("image", nargs="?", metavar="IMAGE", help="image file")
    detect.add_argument("text", nargs="?", metavar="TEXT", help="caption or prompt")
    detect.add_argument("--json", action="store_true", help="print the result as JSON")
    batch = detect.add_argument_group("batch mode")
    batch.add_argument(
        "--pairs",
        metavar="PAIRS.jsonl",
        help='JSON Lines, one {"id": ..., "image": path, "text": caption} per line (id optional: '
        "the line number)",
    )
    batch.add_argument(
        "--out",
        metavar="RESULTS.jsonl",
        help="output JSON Lines; ids already in it are skipped, so rerunning resumes",
    )
    batch.add_argument("--batch-size", type=_positive_int, default=32, help="pairs per batch (32)")
    batch.add_argument(
        "--images-root",
        metavar="DIR",
        help="base of relative image paths (default: the pairs file's directory)",
    )
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_options(detect)
    detect.set_defaults(func=_cmd_detect)

    vis = sub.add_parser(
        "visualize",
        help="draw the caption's words coloured by score (HTML page or PNG figure)",
        description="Words coloured by score (red: negative, green: positive; misaligned words "
        "boxed) next to the image. --out decides the format: .html (self-contained page) or .png "
        "(figure; needs clip4dm[viz]). With --from, draw rows of a `detect --pairs` output "
        "instead of running the model: all of them (or those given by --id) on one HTML page, "
        "or exactly one as a PNG.",
        usage="clip4dm visualize IMAGE TEXT --out PAGE.html|FIGURE.png [options]\n"
        "       clip4dm visualize --from RESULTS.jsonl --out PAGE.html|FIGURE.png "
        "[--id ID ...] [--images-root DIR]",
    )
    vis.add_argument("image", nargs="?", metavar="IMAGE", help="image file")
    vis.add_argument("text", nargs="?", metavar="TEXT", help="caption or prompt")
    vis.add_argument("--out", required=True, metavar="PATH", help="output .html or .png file")
    rows = vis.add_argument_group("from computed results")
    rows.add_argument(
        "--from", dest="results", metavar="RESULTS.jsonl", help="rows written by detect --pairs"
    )
    rows.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        metavar="ID",
        help="only this row's id (repeatable)",
    )
    rows.add_argument(
        "--images-root",
        metavar="DIR",
        help="base of relative image paths in the rows (default: the current directory, then "
        "the results file's directory)",
    )
    _add_model_options(vis)
    vis.set_defaults(func=_cmd_visualize)

    info = sub.add_parser("info", help="print package, torch and device versions (for bug reports)")
    info.set_defaults(func=_cmd_info)

    from clip4dm.eval.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _join_negative_numbers(argv: Sequence[str]) -> list[str]:
    """``--epsilon -5e-5`` → ``--epsilon=-5e-5``: argparse takes "-5e-5" for an option otherwise."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--epsilon" and index + 1 < len(argv):
            value = argv[index + 1]
            try:
                float(value)
            except ValueError:
                pass
            else:
                joined.append(f"{arg}={value}")
                index += 2
                continue
        if arg == "--":
            joined.extend(argv[index:])
            break
        joined.append(arg)
        index += 1
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_numbers(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"clip4dm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
