"""The ``egtr`` command line: ``predict``, ``convert`` and ``info`` (``train`` and ``eval`` are
registered from :mod:`egtr.training.cli` and :mod:`egtr.evaluation.cli`).

Every sub-command runs under :func:`vl_core.cli.run_command`: a user mistake prints one line
``egtr: error: <what> (<where>): <fix>`` and exits 2 (a traceback only with ``--debug``); a run
that finished with error rows exits 1 and says how many; Ctrl-C exits 130 after printing the
command that resumes. ``--quiet`` silences progress bars and third-party chatter.

Nothing here imports torch until a command runs, so ``egtr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from egtr import __version__
from egtr.scene_graph import DEFAULT_OBJECT_THRESHOLD
from vl_core.cli import (
    DTYPE_CHOICES,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_quiet_option,
    device_name,
    exit_status,
    non_negative_int,
    positive_int,
    quiet_libraries,
    run_command,
)

if TYPE_CHECKING:
    from PIL import Image

    from egtr.configuration import EGTRConfig
    from egtr.scene_graph import SceneGraph

PROG = "egtr"

DRAWING_SUFFIX = ".graph.png"
"""``egtr predict --draw DIR`` writes the drawing of ``a/photo.jpg`` to ``DIR/a/photo.graph.png``."""

MANIFEST_SUFFIX = ".run.json"
"""The run manifest of ``--out graphs.jsonl`` is ``graphs.jsonl.run.json``."""

MODEL_HELP = (
    "model directory (save_pretrained / convert / train), or hf:ORG/NAME: a Hugging Face Hub "
    "model, downloaded once into the HF cache (HF_HUB_OFFLINE=1: the cache only)"
)


# -- parser ---------------------------------------------------------------------------------------


def _threshold(text: str) -> float | None:
    """``--object-threshold``: a score in [0, 1], or ``none``."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1] or 'none', got {text!r}")
    return value


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="auto: bf16 (else fp16) on CUDA, float32 on CPU (default: auto)",
    )


def _add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for bug reports)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``egtr`` argument parser (all sub-commands); returns it. Imports no torch."""
    parser = Parser(
        prog=PROG,
        description="Scene graphs (objects and relations) from images in one stage (EGTR).",
        epilog="exit status: 0 done, 1 done but some rows are error rows, 2 usage error, "
        "130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"egtr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = sub.add_parser(
        "predict",
        help="scene graphs of images (JSON lines, drawings)",
        description="Scene graphs of images: a summary on stdout, --json, or a resumable JSON "
        "Lines results file with --out (rows already in it are skipped).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument(
        "--out",
        metavar="RESULTS.jsonl",
        help="append one JSON row per image here (resumable) instead of printing",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out over (and replace existing files at the drawing paths)",
    )
    predict.add_argument(
        "--draw",
        metavar="DIR",
        help=f"draw each graph to DIR/<path relative to the inputs' common folder, "
        f"suffix {DRAWING_SUFFIX}> (needs egtr[viz])",
    )
    predict.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of the rows instead of a summary (without --out)",
    )
    predict.add_argument(
        "--top-k",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="relations per image (default: the model's, 100)",
    )
    predict.add_argument("--unconstrained", action="store_true", help="several predicates per pair")
    predict.add_argument(
        "--object-threshold",
        type=_threshold,
        default=DEFAULT_OBJECT_THRESHOLD,
        metavar="SCORE",
        help="also list objects scoring at least SCORE without a relation "
        f"(default {DEFAULT_OBJECT_THRESHOLD}; 'none': only objects of kept relations)",
    )
    predict.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per forward pass (default: 1)",
    )
    _add_device_options(predict)
    add_quiet_option(predict)
    _add_debug_option(predict)
    predict.set_defaults(func=_cmd_predict)

    convert = sub.add_parser(
        "convert",
        help="import an authors' released Lightning checkpoint",
        description="Convert a released checkpoint and its run's config.json into a model "
        "directory (model.safetensors + config.json, and a README.md model card naming the "
        "source checkpoint and its SHA-256).",
    )
    convert.add_argument("--checkpoint", required=True, help="epoch=NN-....ckpt")
    convert.add_argument(
        "--config", required=True, help="the run's config.json (transformers 4.18)"
    )
    convert.add_argument("--out", required=True, help="output model directory (new or empty)")
    convert.add_argument("--categories", help="categories_dict.json with object/predicate names")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace the model files of an existing --out"
    )
    add_quiet_option(convert)
    _add_debug_option(convert)
    convert.set_defaults(func=_cmd_convert)

    info = sub.add_parser(
        "info",
        help="versions (for bug reports), or a model directory's summary",
        description="Without --model: package and device versions. With --model: the model's "
        "summary (after a strict load of its weights).",
    )
    info.add_argument("--model", help=MODEL_HELP)
    info.add_argument("legacy_model", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    add_quiet_option(info)
    _add_debug_option(info)
    info.set_defaults(func=_cmd_info)

    from egtr.evaluation.cli import add_eval_parser
    from egtr.training.cli import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    return parser


# -- running --------------------------------------------------------------------------------------


def _resumable(args: argparse.Namespace) -> bool:
    """Whether rerunning the same command continues the work (only ``predict --out`` of ours)."""
    if args.command == "predict":
        return bool(args.out)
    return args.command not in ("info", "convert")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``egtr`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Raises ``SystemExit`` for ``--help``, ``--version`` and argument errors (status 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    def command() -> int:
        with quiet_libraries(bool(getattr(args, "quiet", False))):
            return int(func(args))

    # the resume line is PROG COMMAND followed by the words after the sub-command
    words = list(sys.argv[1:] if argv is None else argv)
    rest = words[words.index(args.command) + 1 :] if args.command in words else words
    return run_command(
        f"{PROG} {args.command}",
        command,
        argv=rest,
        debug=bool(getattr(args, "debug", False)),
        resumable=_resumable(args),
    )


def _usage(exc: BaseException) -> UsageError:
    return UsageError(str(exc) or type(exc).__name__)


def _resolve_device(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` of ``--device`` / ``--dtype``; `UsageError` if unusable."""
    from vl_core.devices import resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
        return device, resolve_dtype(args.dtype, device)
    except ValueError as exc:
        raise UsageError(str(exc), "--device/--dtype", "choose a device this machine has") from exc


# -- info -----------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    model_dir = args.model
    if args.legacy_model is not None:
        print(
            f"{PROG} info: warning: the positional MODEL is deprecated and will be removed in the "
            "next release; use --model MODEL",
            file=sys.stderr,
        )
        if model_dir is not None and model_dir != args.legacy_model:
            raise UsageError("two different models given", "--model and MODEL", "give only --model")
        model_dir = args.legacy_model
    if model_dir is None:
        from vl_core import environment_report

        report = environment_report(("egtr", "vl-core", "torch", "transformers", "timm"))
        print(json.dumps(report, indent=2))
        return EXIT_OK
    from egtr.builders import ModelDirectoryError, load_pretrained

    try:
        model = load_pretrained(model_dir)
    except ModelDirectoryError as exc:
        raise _usage(exc) from exc
    config = model.config
    summary: dict[str, Any] = {
        "model": str(model_dir),
        "objects": config.num_object_labels,
        "predicates": config.num_rel_labels,
        "queries": config.num_queries,
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "backbone": getattr(config.backbone_config, "backbone", None)
        or getattr(config.backbone_config, "model_type", None),
        "use_freq_bias": config.use_freq_bias,
        "use_logit_adjustment": config.use_logit_adjustment,
        "object_score": config.object_score,
    }
    params = sum(p.numel() for p in model.parameters())
    summary["parameters"] = params
    summary["with_frequency_table"] = params + model.triplet_dist.numel()
    print(json.dumps(summary, indent=2))
    return EXIT_OK


# -- convert --------------------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    for flag, value in (
        ("--checkpoint", args.checkpoint),
        ("--config", args.config),
        ("--categories", args.categories),
    ):
        if value is not None and not Path(value).is_file():
            missing = "is a directory" if Path(value).is_dir() else "not found"
            raise UsageError(f"{flag} {missing}", value, f"give the path of the {flag[2:]} file")
    from egtr.builders import JSONFileError, ModelDirectoryError
    from egtr.convert import convert_checkpoint, describe_mismatch
    from vl_core.checkpoints import CheckpointError, CheckpointMismatchError
    from vl_core.files import ResultsFileError

    try:
        report = convert_checkpoint(
            args.checkpoint,
            args.config,
            args.out,
            categories=args.categories,
            overwrite=args.overwrite,
        )
    except CheckpointMismatchError as exc:
        raise UsageError(
            "the checkpoint does not fit its configuration",
            f"{args.checkpoint}: {describe_mismatch(exc)}",
            "give the config.json of the run that wrote this checkpoint",
        ) from exc
    except (CheckpointError, JSONFileError, ModelDirectoryError, ResultsFileError) as exc:
        raise _usage(exc) from exc
    except ValueError as exc:  # a configuration the released models cannot have
        raise UsageError(str(exc), args.config, "give the run's config.json") from exc
    print(
        f"converted {args.checkpoint} -> {args.out}: {report.loaded} tensors loaded, "
        f"{len(report.ignored_keys)} dropped (num_batches_tracked of unfrozen BatchNorms); "
        f"model card {Path(args.out) / 'README.md'}"
    )
    return EXIT_OK


# -- predict --------------------------------------------------------------------------------------


def drawing_paths(images: Sequence[str], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Where ``egtr predict --draw FOLDER`` draws each of ``images``; returns ``{image: path}``.

    Each drawing keeps the image's path relative to the common folder of all ``images`` (so
    ``a/x.png`` and ``b/x.png`` give ``FOLDER/a/x.graph.png`` and ``FOLDER/b/x.graph.png``),
    with the suffix replaced by :data:`DRAWING_SUFFIX`. Images of one folder that differ only in
    their suffix (``x.png``, ``x.jpg``) keep it: ``x.png.graph.png``, ``x.jpg.graph.png``.
    """
    absolute = {name: Path(os.path.abspath(name)) for name in images}
    if not absolute:
        return {}
    common = Path(os.path.commonpath([str(path.parent) for path in absolute.values()]))
    relative = {name: path.relative_to(common) for name, path in absolute.items()}
    stems: dict[Path, int] = {}
    for rel in relative.values():
        key = rel.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    paths = {}
    for name, rel in relative.items():
        base = rel if stems[rel.with_suffix("")] > 1 else rel.with_suffix("")
        paths[name] = Path(folder) / base.parent / (base.name + DRAWING_SUFFIX)
    return paths


@dataclass
class _PredictPlan:
    """Everything ``egtr predict`` decided before loading the model or touching a file."""

    images: list[str]
    model_dir: Path
    config: EGTRConfig
    device: Any
    dtype: Any
    out: Path | None = None
    manifest: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    already: int = 0
    start_over: bool = False
    drawings: dict[str, Path] = field(default_factory=dict)


def _plan_predict(args: argparse.Namespace) -> _PredictPlan:
    """Validate every argument and the existing outputs; raises `UsageError`. Writes nothing."""
    from egtr.builders import ModelDirectoryError, read_model_config, resolve_model
    from vl_core.files import ResultsFileError, refuse_input_as_output

    images = list(dict.fromkeys(args.images))  # an image given twice is predicted once
    out = Path(args.out) if args.out else None
    manifest = out.with_name(out.name + MANIFEST_SUFFIX) if out else None
    drawings = drawing_paths(images, args.draw) if args.draw else {}
    try:
        if out is not None and manifest is not None:
            if out.is_dir():
                raise UsageError("--out is a directory", str(out), "give a .jsonl file path")
            refuse_input_as_output([out, manifest], images)
            refuse_input_as_output([out], drawings.values())
        refuse_input_as_output(drawings.values(), images)
    except ResultsFileError as exc:
        raise _usage(exc) from exc
    if args.draw:
        from egtr.drawing import require_matplotlib

        require_matplotlib()  # MissingExtraError: one line naming egtr[viz]
    try:
        model_dir = resolve_model(args.model)  # a hub model is fetched (once) here
        config = read_model_config(model_dir)
    except ModelDirectoryError as exc:
        raise _usage(exc) from exc
    device, dtype = _resolve_device(args)
    plan = _PredictPlan(images, model_dir, config, device, dtype, out, manifest, drawings=drawings)
    plan.pending = images
    if out is not None and manifest is not None:
        _plan_resume(plan, args)
    if drawings and not args.overwrite:
        from egtr.drawing import is_drawing

        for name in plan.pending:
            path = drawings[name]
            if path.exists() and not is_drawing(path):
                raise UsageError(
                    "the drawing would replace a file egtr did not draw",
                    str(path),
                    "choose another --draw folder, or pass --overwrite",
                )
    return plan


def _plan_resume(plan: _PredictPlan, args: argparse.Namespace) -> None:
    """The run manifest's record and the images still to do; raises `UsageError`."""
    from egtr.builders import is_hub_name
    from vl_core.files import (
        ResultsFileError,
        check_manifest,
        file_fingerprint,
        id_key,
        read_results,
    )

    out, manifest, config = plan.out, plan.manifest, plan.config
    assert out is not None
    assert manifest is not None
    model_dir = plan.model_dir
    plan.record = {
        "command": "egtr predict",
        "model": args.model if is_hub_name(args.model) else os.path.abspath(model_dir),
        "model_files": {
            path.name: file_fingerprint(path)
            for path in sorted(model_dir.iterdir())
            if path.name == "config.json" or path.suffix == ".safetensors"
        },
        "top_k": config.top_k if args.top_k is None else args.top_k,
        "graph_constrained": not args.unconstrained,
        "object_threshold": args.object_threshold,
        "object_score": config.object_score,
        "dtype": str(plan.dtype).removeprefix("torch."),
    }
    done: set[str] = set()
    try:
        if out.exists() and not args.overwrite:
            existing = read_results(out, repair=False)  # refuses a file it did not write
            check_manifest(manifest, plan.record)  # refuses other settings or another model
            done = existing.done
        else:
            plan.start_over = out.exists()
    except ResultsFileError as exc:
        raise _usage(exc) from exc
    plan.pending = [name for name in plan.images if id_key(name) not in done]
    plan.already = len(plan.images) - len(plan.pending)


class _Results:
    """Where ``egtr predict`` puts rows: a results file (appended, resumable) or stdout."""

    def __init__(self, plan: _PredictPlan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.collected: list[dict[str, Any]] = []
        self._writer: Any = None

    def add(self, row: Mapping[str, Any], graph: SceneGraph | None) -> None:
        """Record one row (a graph row, or an error row when ``graph`` is None)."""
        if self.plan.out is not None:
            self._write(row)
        elif self.args.json:
            self.collected.append(dict(row))
        elif graph is not None:
            _print_summary(str(row["image"]), graph.triplets(), sys.stdout)

    def _write(self, row: Mapping[str, Any]) -> None:
        from vl_core.files import RowWriter, atomic_write, check_manifest

        out, manifest = self.plan.out, self.plan.manifest
        assert out is not None
        assert manifest is not None
        if self._writer is None:
            # first row: only now is an old output replaced (never emptied for nothing)
            check_manifest(manifest, self.plan.record, overwrite=True)
            self._writer = RowWriter(out)
            if self.plan.start_over:
                atomic_write(out, json.dumps(row, ensure_ascii=False) + "\n")
                return
        self._writer.write(row)

    def close(self) -> None:
        """Sync the results file, or print the collected ``--json`` rows."""
        if self._writer is not None:
            self._writer.close()
        if self.plan.out is None and self.args.json:
            json.dump(self.collected, sys.stdout, indent=2)
            sys.stdout.write("\n")


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _cmd_predict(args: argparse.Namespace) -> int:
    plan = _plan_predict(args)
    from tqdm import tqdm

    from egtr.builders import ModelDirectoryError
    from egtr.predictor import EGTRPredictor
    from vl_core.files import error_text, read_results
    from vl_core.images import ImageLoadError, load_image

    note = print if not args.quiet else _silent
    if plan.out is not None and plan.already:
        note(
            f"{PROG} predict: resuming {plan.out}: {plan.already} of {len(plan.images)} images "
            "already done",
            file=sys.stderr,
        )
    if not plan.pending:
        note(f"{PROG} predict: nothing to do", file=sys.stderr)
        return EXIT_OK
    try:
        predictor = EGTRPredictor(
            plan.model_dir,
            device=plan.device,
            dtype=plan.dtype,
            top_k=args.top_k,
            graph_constrained=not args.unconstrained,
            object_threshold=args.object_threshold,
        )
    except ModelDirectoryError as exc:
        raise _usage(exc) from exc
    if plan.out is not None and plan.out.exists() and not plan.start_over:
        read_results(plan.out)  # repair a torn last line; error rows are retried
    results = _Results(plan, args)
    errors = 0
    try:
        with tqdm(
            total=len(plan.pending), desc="egtr", unit="img", file=sys.stderr, disable=args.quiet
        ) as progress:
            for chunk in _chunks(plan.pending, args.batch_size):
                loaded: list[tuple[str, Image.Image]] = []
                failed: dict[str, str] = {}
                for name in chunk:
                    try:
                        loaded.append((name, load_image(name)))
                    except (ImageLoadError, OSError) as exc:
                        failed[name] = error_text(exc)
                graphs = dict(
                    zip(
                        [name for name, _ in loaded],
                        predictor.predict_loaded([image for _, image in loaded]),
                        strict=True,
                    )
                )
                images = dict(loaded)
                for name in chunk:
                    if name in failed:
                        errors += 1
                        tqdm.write(
                            f"{PROG} predict: skipped {name}: {failed[name]}", file=sys.stderr
                        )
                        results.add({"id": name, "image": name, "error": failed[name]}, None)
                    else:
                        results.add(
                            _graph_row(name, graphs[name], images[name], plan), graphs[name]
                        )
                    progress.update()
    finally:
        results.close()
    if errors:
        where = f" (error rows in {plan.out}; rerun to retry them)" if plan.out else ""
        print(
            f"{PROG} predict: {errors} of {len(plan.pending)} images could not be read{where}",
            file=sys.stderr,
        )
    elif plan.out is not None:
        note(f"{PROG} predict: {len(plan.pending)} graphs written to {plan.out}", file=sys.stderr)
    return exit_status(errors)


def _graph_row(
    name: str, graph: SceneGraph, image: Image.Image, plan: _PredictPlan
) -> dict[str, Any]:
    """``{"id", "image", **graph.to_dict(), "drawing"?}``, drawing the graph when asked."""
    row: dict[str, Any] = {"id": name, "image": name, **graph.to_dict()}
    if plan.drawings:
        from egtr.drawing import draw_scene_graph

        row["drawing"] = str(draw_scene_graph(image, graph, plan.drawings[name]))
    return row


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """``print`` under ``--quiet``."""


def _print_summary(name: str, triplets: list[tuple[str, str, str, float]], out: IO[str]) -> None:
    out.write(f"{name}: {len(triplets)} relations\n")
    for subj, pred, obj, score in triplets[:10]:
        out.write(f"  {score:.3f}  {subj} {pred} {obj}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
