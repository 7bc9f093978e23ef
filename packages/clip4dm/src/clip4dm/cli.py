"""The ``clip4dm`` command line: ``detect`` (one pair or a pairs file), ``visualize``, ``eval``, ``info``.

The shared dialect of `vl_core.cli`: a mistake the user can fix (a missing or unreadable image, an
empty caption, a model that cannot be loaded here or is not a CLIP, an output that would replace a
file this command did not write) prints one line, ``clip4dm COMMAND: error: ...``, and exits with
status 2 (a traceback only with ``--debug``). A batch that finished with error rows exits with 1,
an interrupted one with 130 after printing the command that resumes it. ``--help`` imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4dm import __version__
from clip4dm.defaults import (
    DEFAULT_EPSILON,
    DEFAULT_LAYERS,
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    MODES,
)
from vl_core.cli import (
    DTYPE_CHOICES,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_quiet_option,
    device_name,
    exit_status,
    finite_float,
    positive_int,
    quiet_libraries,
    report_error_rows,
    run_command,
)

if TYPE_CHECKING:
    from PIL import Image

    from clip4dm.detector import CLIP4DM
    from clip4dm.results import Detection
    from clip4dm.visualize import DetectionData
    from vl_core.images import ImageSource

__all__ = ["add_model_options", "add_run_options", "build_parser", "format_table", "main"]

PROG = "clip4dm"

# -- shared options -------------------------------------------------------------------------------


def add_run_options(parser: argparse.ArgumentParser, *, no_progress_alias: bool = False) -> None:
    """``--quiet`` (with the deprecated ``--no-progress`` where it was documented) and ``--debug``."""
    add_quiet_option(parser, no_progress_alias=no_progress_alias)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for bug reports)"
    )


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    defaults: bool = True,
    title: str = "model and method",
) -> argparse._ArgumentGroup:
    """``--model``, ``--mode``, ``--epsilon``, ``--layers``, ``--template``, ``--device`` and
    ``--dtype``; with ``defaults=False`` the method options default to ``None`` (a benchmark's
    own setting). Returns the argument group, for more options."""
    group = parser.add_argument_group(title)
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hf:<hub id or dir>, openclip:<arch>/<tag or checkpoint> or openclip:<dir>, "
        f"or a local HF directory (default: {DEFAULT_MODEL}, downloaded once from the "
        "Hugging Face Hub)",
    )
    group.add_argument(
        "--mode",
        choices=MODES,
        default=MODES[0] if defaults else None,
        help="threshold: every word scoring below --epsilon; most_negative: the lowest-scoring "
        "word (default: " + (MODES[0] if defaults else "the benchmark's") + ")",
    )
    group.add_argument(
        "--epsilon",
        type=finite_float,
        default=DEFAULT_EPSILON if defaults else None,
        help=f"threshold on word scores for --mode threshold (default: {DEFAULT_EPSILON:g})",
    )
    group.add_argument(
        "--layers",
        type=positive_int,
        default=DEFAULT_LAYERS if defaults else None,
        help=f"number of last text-encoder layers to attribute over (default: {DEFAULT_LAYERS})",
    )
    group.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE if defaults else None,
        help=f"prefix encoded before the caption, not reported (default: {DEFAULT_TEMPLATE!r})",
    )
    group.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto, cpu, cuda, cuda:1, ... (default: auto: a GPU when there is one)",
    )
    group.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="(default: auto: float32 on the CPU, bfloat16 or float16 on a GPU)",
    )
    return group


def join_negative_numbers(
    argv: Sequence[str], options: Sequence[str] = ("--epsilon", "--epsilon-grid")
) -> list[str]:
    """``--epsilon -5e-5`` → ``--epsilon=-5e-5`` (also for comma-separated numbers such as
    ``--epsilon-grid -1e-5,-5e-5``): argparse takes "-5e-5" for an option otherwise.

    Returns the new argument list (arguments after ``--`` are left alone).
    """
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in options and index + 1 < len(argv):
            value = argv[index + 1]
            try:
                [float(part) for part in value.split(",")]
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


def _build_detector(args: argparse.Namespace) -> CLIP4DM:
    """The detector the options ask for; a model that cannot be loaded is a `UsageError`."""
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
    except (OSError, ValueError, TypeError) as exc:  # incl. ModelNotAvailableError, CheckpointError
        raise UsageError(str(exc)) from exc


def _load_image(source: str) -> Image.Image:
    from vl_core.images import load_image

    try:
        return load_image(source)
    except (ValueError, OSError) as exc:  # vl_core.images.ImageLoadError is a ValueError
        raise UsageError(str(exc)) from exc


def _check_text(text: str) -> str:
    if not text.strip():
        raise UsageError("the text is empty or whitespace-only", fix="give the caption to check")
    return text


def _detect_one(args: argparse.Namespace, image: Image.Image, text: str) -> Detection:
    detector = _build_detector(args)
    try:
        return detector.detect(image, text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _refuse_existing(out: str, overwrite: bool, inputs: Sequence[str | None]) -> None:
    """Refuse ``out`` when it is an input, or an existing file without ``--overwrite``."""
    from vl_core.files import refuse_input_as_output

    refuse_input_as_output([out], [i for i in inputs if i is not None])
    if Path(out).exists() and not overwrite:
        raise UsageError(
            f"{out} already exists",
            "--out",
            "pass --overwrite to replace it, or choose another path",
        )


# -- detect ---------------------------------------------------------------------------------------


def _display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK, emoji) characters count 2, marks 0."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _pad(text: str, width: int) -> str:
    return text + " " * max(width - _display_width(text), 0)


def format_table(detection: Detection) -> str:
    """The per-word table, the selected words and the caption-level scores, as plain text.

    Columns are aligned by display width, so wide (CJK) characters and emoji keep them straight.
    """
    selected = {w.index for w in detection.misaligned}
    words = [(w.word, f"{w.score:+.3e}", w.index in selected) for w in detection.words]
    words += [(word, "-", False) for word in detection.unscored_words]
    width = min(max([_display_width(word) for word, _, _ in words] + [4]), 40)
    lines = [f"{'#':>3}  {_pad('word', width)}  {'score':>10}"]
    for number, (word, score, marked) in enumerate(words):
        marker = "  <-- misaligned" if marked else ""
        if score == "-":
            marker = "  (not scored)"
        lines.append(f"{number:>3}  {_pad(word, width)}  {score:>10}{marker}")
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
    columns = (args.image_column, args.text_column, args.id_column)
    if args.out is not None or args.images_root is not None or args.overwrite or any(columns):
        raise UsageError(
            "--out, --images-root, --overwrite and the --*-column options go with --pairs "
            "(batch mode)"
        )
    if args.image is None or args.text is None:
        raise UsageError("give IMAGE and TEXT, or --pairs PAIRS.jsonl --out RESULTS.jsonl")
    text = _check_text(args.text)
    image = _load_image(args.image)
    detection = _detect_one(args, image, text)
    if args.json:
        print(json.dumps(detection.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_table(detection))
    return EXIT_OK


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options a resumed run must share with the rows already written."""
    return {
        "model": args.model,
        "mode": args.mode,
        "epsilon": args.epsilon,
        "layers": args.layers,
        "template": args.template,
        "dtype": args.dtype,
    }


def _column_name(text: str) -> str:
    """An argparse type: a field or column name (not empty)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a column name cannot be empty")
    return text


def _detect_pairs(args: argparse.Namespace) -> int:
    from clip4dm.batch import Columns, MissingColumnError, run_pairs

    if args.image is not None or args.text is not None:
        raise UsageError("give either IMAGE TEXT or --pairs, not both")
    if args.out is None:
        raise UsageError("--pairs needs --out RESULTS.jsonl")
    if args.json:
        raise UsageError("--json is for a single pair; --pairs always writes JSON Lines")

    def detector() -> CLIP4DM:  # under torchrun, each process on its own GPU
        from vl_core.distributed import device_for_rank, from_environment

        device = device_for_rank(args.device, from_environment())
        return _build_detector(argparse.Namespace(**{**vars(args), "device": device}))

    columns = Columns(
        image=args.image_column or "image", text=args.text_column or "text", id=args.id_column
    )
    try:
        summary = run_pairs(
            args.pairs,
            args.out,
            detector,
            batch_size=args.batch_size,
            images_root=args.images_root,
            progress=not args.quiet,
            settings=_settings(args),
            overwrite=args.overwrite,
            columns=columns,
        )
    except MissingColumnError as exc:
        raise UsageError(exc.what, f"--{exc.role}-column", exc.fix) from exc
    from vl_core.distributed import from_environment

    if not from_environment().is_main:  # under torchrun, rank 0 reports
        return exit_status(summary.errors)
    prog = f"{PROG} detect"
    for note in summary.dropped:
        print(f"{prog}: repaired {args.out} ({note}); its pair is computed again", file=sys.stderr)
    if summary.retried:
        print(
            f"{prog}: retried {summary.retried} error row(s) of the previous run", file=sys.stderr
        )
    print(f"{PROG}: {summary} -> {args.out}")
    return report_error_rows(
        prog,
        summary.errors,
        "pair(s) could not be scored",
        f": see their error rows in {args.out}, fix them and rerun the command to retry them",
    )


# -- visualize ------------------------------------------------------------------------------------


def _output_kind(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".png":
        return "png"
    raise UsageError(f"--out must end in .html or .png, got {out!r}")


def _read_rows(path: str, ids: Sequence[str] | None) -> tuple[list[dict[str, Any]], int]:
    """Result rows of a results file (optionally only the given ids) and the number of error or
    invalid rows skipped."""
    from clip4dm._lines import read_lines
    from clip4dm.rows import detection_of, upgrade

    rows: list[dict[str, Any]] = []
    skipped = 0
    try:
        lines = list(read_lines(path))
    except FileNotFoundError:
        raise UsageError(f"results file {path!r} not found") from None
    except OSError as exc:
        raise UsageError(f"cannot read results file {path!r}: {exc.strerror}") from exc
    for line in lines:
        try:
            row = upgrade(json.loads(line.text or ""))
            detection_of(row)
        except (ValueError, AttributeError):  # not JSON, not an object, an error row, invalid
            skipped += 1
            continue
        if ids is None or str(row.get("id")) in ids:
            rows.append(row)
    if ids is not None:
        found = {str(row.get("id")) for row in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UsageError(f"no result row with id {', '.join(missing)} in {path}")
    if not rows:
        raise UsageError(f"no result rows to show in {path}")
    return rows, skipped


def _row_image(row: Mapping[str, Any], results: str, images_root: str | None) -> Path | None:
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


def _cmd_visualize(args: argparse.Namespace) -> int:
    from clip4dm import visualize

    kind = _output_kind(args.out)
    if args.results is not None:
        return _visualize_results(args, kind)
    if args.ids or args.images_root is not None:
        raise UsageError("--id and --images-root go with --from RESULTS.jsonl")
    if args.image is None or args.text is None:
        raise UsageError("give IMAGE and TEXT, or --from RESULTS.jsonl")
    text = _check_text(args.text)
    _refuse_existing(args.out, args.overwrite, [args.image])
    if kind == "png":
        visualize.require_matplotlib()
    image = _load_image(args.image)
    detection = _detect_one(args, image, text)
    if kind == "html":
        visualize.save_html(image, detection, args.out, title=f"clip4dm: {Path(args.image).name}")
    else:
        visualize.save_figure(image, detection, args.out)
    print(f"{PROG}: wrote {args.out}")
    return EXIT_OK


def _visualize_results(args: argparse.Namespace, kind: str) -> int:
    from clip4dm import visualize

    if args.image is not None or args.text is not None:
        raise UsageError("give either IMAGE TEXT or --from RESULTS.jsonl, not both")
    _refuse_existing(args.out, args.overwrite, [args.results])
    rows, skipped = _read_rows(args.results, args.ids or None)
    if kind == "png":
        if len(rows) != 1:
            raise UsageError(
                f"a PNG shows one pair and {args.results} has {len(rows)}", fix="pick one with --id"
            )
        visualize.require_matplotlib()
        row = rows[0]
        image = _row_image(row, args.results, args.images_root)
        if image is None:
            raise UsageError(
                f"image {row.get('image')!r} of id {row.get('id')!r} not found",
                fix="point --images-root at the images",
            )
        visualize.save_figure(_load_image(str(image)), row, args.out)
    else:
        entries: list[tuple[ImageSource | None, DetectionData, str | None]] = []
        for row in rows:
            image = _row_image(row, args.results, args.images_root)
            if image is None:
                print(
                    f"{PROG} visualize: image {row.get('image')!r} not found; shown without it",
                    file=sys.stderr,
                )
            entries.append((image, row, f"{row.get('id')} — {row.get('image', '')}"))
        page = visualize.render_html_report(entries, title=f"clip4dm: {Path(args.results).name}")
        from vl_core.files import atomic_write

        atomic_write(args.out, page)
    note = f" ({skipped} error or invalid row(s) skipped)" if skipped else ""
    print(f"{PROG}: wrote {args.out}{note}")
    return EXIT_OK


# -- info -----------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from vl_core import environment_report

    report = environment_report(("clip4dm", "vl-core", "torch", "transformers", "open_clip_torch"))
    print(json.dumps(report, indent=2))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``clip4dm`` argument parser (usage errors print one line and exit with status 2)."""
    parser = Parser(
        prog=PROG,
        description="Find the words of a caption that do not match the image (CLIP4DM, F-CLIPScore).",
    )
    parser.add_argument("--version", action="version", version=f"clip4dm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    detect = sub.add_parser(
        "detect",
        help="score each word of a caption against an image (one pair, or a pairs file)",
        description="Score each word of TEXT against IMAGE and mark the misaligned words; or, "
        "with --pairs, score a file of pairs (JSON Lines, CSV, TSV or Parquet) into --out "
        "(resumable; under torchrun the pairs are shared out among the processes). Exit status: "
        "0 done, 1 some pairs are error rows, 2 usage error, 130 interrupted.",
        usage="clip4dm detect IMAGE TEXT [options] [--json]\n"
        "       clip4dm detect --pairs PAIRS.jsonl|.csv|.tsv|.parquet --out RESULTS.jsonl "
        "[options]",
    )
    detect.add_argument("image", nargs="?", metavar="IMAGE", help="image file")
    detect.add_argument("text", nargs="?", metavar="TEXT", help="caption or prompt")
    detect.add_argument("--json", action="store_true", help="print the result as JSON")
    batch = detect.add_argument_group("batch mode")
    batch.add_argument(
        "--pairs",
        metavar="PAIRS",
        help='JSON Lines, one {"id": ..., "image": path, "text": caption} per line; or a .csv, '
        ".tsv or .parquet table with those columns (Parquet needs clip4dm[parquet]). id is "
        "optional: the line number (the row number in Parquet)",
    )
    batch.add_argument(
        "--image-column",
        type=_column_name,
        metavar="NAME",
        help="field or column of the image paths (default: image)",
    )
    batch.add_argument(
        "--text-column",
        type=_column_name,
        metavar="NAME",
        help="field or column of the captions (default: text)",
    )
    batch.add_argument(
        "--id-column",
        type=_column_name,
        metavar="NAME",
        help="field or column of the ids (default: id when there is one, else the line or row "
        "number)",
    )
    batch.add_argument(
        "--out",
        metavar="RESULTS.jsonl",
        help="output JSON Lines; ids already in it are skipped, so rerunning resumes "
        "(OUT.run.json records the pairs file and settings it was made from)",
    )
    batch.add_argument(
        "--batch-size", type=positive_int, default=32, help="pairs per batch (default: 32)"
    )
    batch.add_argument(
        "--images-root",
        metavar="DIR",
        help="base of relative image paths (default: the pairs file's directory)",
    )
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out over (also when it was made from other inputs or settings, or is not "
        "a results file)",
    )
    add_model_options(detect)
    add_run_options(detect, no_progress_alias=True)
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
    vis.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    add_model_options(vis)
    add_run_options(vis)
    vis.set_defaults(func=_cmd_visualize)

    info = sub.add_parser("info", help="print package, torch and device versions (for bug reports)")
    add_run_options(info)
    info.set_defaults(func=_cmd_info)

    from clip4dm.eval.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported in one line: bad or unusable files (including outputs this command did
    not write) and failed evaluations."""
    from clip4dm.eval.errors import EvalError
    from vl_core.files import ResultsFileError

    return (ResultsFileError, EvalError, OSError)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the parsed command ``args`` under the shared rules; returns the exit status.

    ``argv`` are the command's words after the subcommand (for the resume line of an interrupted
    run).
    """
    command: Callable[[argparse.Namespace], int] = args.func
    with quiet_libraries(getattr(args, "quiet", False)):
        return run_command(
            f"{PROG} {args.command}",
            lambda: command(args),
            argv=argv,
            user_errors=_user_errors(),
            debug=getattr(args, "debug", False),
        )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``clip4dm`` console script; returns the exit status (2 for a usage error)."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(join_negative_numbers(words))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    rest = words[words.index(args.command) + 1 :] if args.command in words else words
    return run(args, rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
