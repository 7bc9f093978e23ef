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
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
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
    report_error_rows,
    run_command,
)

if TYPE_CHECKING:
    from PIL import Image

    from egtr.configuration import EGTRConfig
    from egtr.inputs import ImageInput
    from egtr.scene_graph import SceneGraph
    from vl_core.distributed import Dist

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
    """``--object-threshold`` / ``--relation-threshold``: a score in [0, 1], or ``none``."""
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
        "Lines results file with --out (rows already in it are skipped). Under torchrun "
        "(--out only) the images are shared out among the processes.",
    )
    predict.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files, folders (searched recursively for images; row ids relative to the "
        "folder) or quoted glob patterns ('photos/**/*.jpg')",
    )
    predict.add_argument(
        "--list",
        dest="list_file",
        metavar="FILE",
        help="also predict the images listed in FILE, one path per line (- : standard input)",
    )
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
        "--relation-threshold",
        type=_threshold,
        default=None,
        metavar="SCORE",
        help="keep only relations scoring at least SCORE (a triplet's score is subject score x "
        "object score x predicate score x connectivity score; default: none)",
    )
    predict.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="consecutive images computed together, one forward pass per image shape; also "
        "the unit a resumed or torchrun run recomputes and shares out (default: 1)",
    )
    predict.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="processes that read and preprocess images while the model runs (default: "
        "min(4, CPUs - 1); 0: read in the main process)",
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


def _resolve_device(name: str, dtype: str) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` of ``--device`` / ``--dtype``; `UsageError` if unusable."""
    from vl_core.devices import resolve_device, resolve_dtype

    try:
        device = resolve_device(name)
        return device, resolve_dtype(dtype, device)
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


def drawing_paths(
    images: Sequence[str], folder: str | os.PathLike[str], *, roots: Sequence[str] = ()
) -> dict[str, Path]:
    """Where ``egtr predict --draw FOLDER`` draws each of ``images``; returns ``{image: path}``.

    Each drawing keeps the image's path relative to the common folder of all ``images`` and of the
    folder arguments ``roots`` they were found in (so ``a/x.png`` and ``b/x.png`` give
    ``FOLDER/a/x.graph.png`` and ``FOLDER/b/x.graph.png``, and the images of one folder argument
    are drawn at their row ids), with the suffix replaced by :data:`DRAWING_SUFFIX`. Images of one
    folder that differ only in their suffix (``x.png``, ``x.jpg``) keep it: ``x.png.graph.png``,
    ``x.jpg.graph.png``.
    """
    absolute = {name: Path(os.path.abspath(name)) for name in images}
    if not absolute:
        return {}
    parents = [str(path.parent) for path in absolute.values()]
    common = Path(os.path.commonpath(parents + [os.path.abspath(root) for root in roots]))
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

    inputs: list[ImageInput]
    model_dir: Path
    config: EGTRConfig
    device: Any
    dtype: Any
    dist: Dist
    workers: int
    out: Path | None = None
    manifest: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    pending: list[ImageInput] = field(default_factory=list)
    already: int = 0
    parts: int = 0
    drawings: dict[str, Path] = field(default_factory=dict)
    """Drawing path by row id (with ``--draw``)."""


def _plan_predict(args: argparse.Namespace) -> _PredictPlan:
    """Validate every argument and the existing outputs; raises `UsageError`. Writes nothing."""
    from egtr.builders import ModelDirectoryError, read_model_config, resolve_model
    from egtr.inputs import InputError, default_workers, find_images
    from vl_core.distributed import DistributedError, device_for_rank, from_environment
    from vl_core.files import ResultsFileError, refuse_input_as_output

    try:
        dist = from_environment()
    except DistributedError as exc:
        raise _usage(exc) from exc
    if dist.sharded and args.out is None:
        raise UsageError(
            "under torchrun the rows go to a results file", "--out", "give --out RESULTS.jsonl"
        )
    if dist.sharded and args.list_file == "-":
        raise UsageError(
            "under torchrun the processes cannot share standard input", "--list -", "list a file"
        )
    try:
        inputs = find_images(args.images, args.list_file)
    except InputError as exc:
        raise _usage(exc) from exc
    paths = [item.path for item in inputs]
    roots = sorted({item.folder for item in inputs if item.folder is not None})
    out = Path(args.out) if args.out else None
    manifest = out.with_name(out.name + MANIFEST_SUFFIX) if out else None
    drawings: dict[str, Path] = {}
    if args.draw:
        by_path = drawing_paths(paths, args.draw, roots=roots)
        drawings = {item.id: by_path[item.path] for item in inputs}
        draw = Path(os.path.abspath(args.draw))
        for root in roots:
            if draw.is_relative_to(os.path.abspath(root)):
                raise UsageError(
                    "the drawings would go into an input folder, and be taken as images by the "
                    "next run",
                    f"--draw {args.draw} in {root}",
                    "choose a --draw folder outside the input folders",
                )
    try:
        if out is not None and manifest is not None:
            if out.is_dir():
                raise UsageError("--out is a directory", str(out), "give a .jsonl file path")
            refuse_input_as_output([out, manifest], paths)
            refuse_input_as_output([out], drawings.values())
        refuse_input_as_output(drawings.values(), paths)
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
    device, dtype = _resolve_device(device_for_rank(args.device, dist), args.dtype)
    workers = default_workers() if args.workers is None else args.workers
    plan = _PredictPlan(
        inputs, model_dir, config, device, dtype, dist, workers, out, manifest, drawings=drawings
    )
    plan.pending = inputs
    if out is not None and manifest is not None:
        _plan_resume(plan, args)
    if drawings and not args.overwrite:
        from egtr.drawing import is_drawing

        for item in plan.pending:
            path = drawings[item.id]
            if path.exists() and not is_drawing(path):
                raise UsageError(
                    "the drawing would replace a file egtr did not draw",
                    str(path),
                    "choose another --draw folder, or pass --overwrite",
                )
    return plan


def _plan_resume(plan: _PredictPlan, args: argparse.Namespace) -> None:
    """The run manifest's record and the images still to do (reading only); raises
    `UsageError` for an output egtr did not write or one of other settings."""
    from egtr.builders import is_hub_name
    from vl_core.files import (
        ResultsFileError,
        check_manifest,
        file_fingerprint,
        id_key,
        read_results,
    )
    from vl_core.runs import leftover_parts

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
        "relation_threshold": args.relation_threshold,
        "object_score": config.object_score,
        "dtype": str(plan.dtype).removeprefix("torch."),
    }
    if args.overwrite:
        return
    parts = leftover_parts(out)  # of an interrupted run under torchrun
    done: set[str] = set()
    try:
        for path in [out, *parts]:
            done |= read_results(path, repair=False).done  # refuses a file it did not write
        if (out.exists() or parts) and manifest.exists():
            check_manifest(manifest, plan.record)  # refuses other settings or another model
    except ResultsFileError as exc:
        raise _usage(exc) from exc
    plan.pending = [item for item in plan.inputs if id_key(item.id) not in done]
    plan.already = len(plan.inputs) - len(plan.pending)
    plan.parts = len(parts)


class _Printed:
    """Where ``egtr predict`` without ``--out`` puts rows: a summary, or ``--json`` at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.collected: list[dict[str, Any]] = []

    def write(self, row: Mapping[str, Any], graph: SceneGraph | None) -> None:
        """Record one row (a graph row, or an error row when ``graph`` is None)."""
        if self.as_json:
            self.collected.append(dict(row))
        elif graph is not None:
            _print_summary(str(row["image"]), graph.triplets(), sys.stdout)

    def close(self) -> None:
        """Print the collected ``--json`` rows."""
        if self.as_json:
            json.dump(self.collected, sys.stdout, indent=2)
            sys.stdout.write("\n")


def _cmd_predict(args: argparse.Namespace) -> int:
    plan = _plan_predict(args)
    note = print if not args.quiet else _silent
    if plan.out is not None and not plan.dist.sharded and not plan.pending and not plan.parts:
        note(
            f"{PROG} predict: {plan.out} holds all {len(plan.inputs)} images; nothing to do",
            file=sys.stderr,
        )
        return EXIT_OK
    from vl_core.distributed import process_group

    with process_group("gloo") as dist:
        return _predict(plan, args, dist)


def _predict(plan: _PredictPlan, args: argparse.Namespace, dist: Dist) -> int:
    """Run the planned prediction on this process's share; returns the exit status."""
    from tqdm import tqdm

    from egtr.builders import ModelDirectoryError
    from egtr.loading import load_blocks
    from egtr.predictor import EGTRPredictor
    from vl_core.files import ResultsFileError
    from vl_core.runs import ShardedRun

    note = print if not args.quiet and dist.is_main else _silent
    try:
        predictor = EGTRPredictor(
            plan.model_dir,
            device=plan.device,
            dtype=plan.dtype,
            top_k=args.top_k,
            graph_constrained=not args.unconstrained,
            object_threshold=args.object_threshold,
            relation_threshold=args.relation_threshold,
        )
    except ModelDirectoryError as exc:
        raise _usage(exc) from exc
    ids = [item.id for item in plan.inputs]
    run: ShardedRun | None = None
    if plan.out is not None:
        run = ShardedRun(
            plan.out,
            ids,
            dist,
            block_size=args.batch_size,
            manifest=plan.manifest,
            record=plan.record,
            overwrite=args.overwrite,
        )
        try:
            resumed = run.start()  # folds what an earlier run left into the results file
        except ResultsFileError as exc:
            raise _usage(exc) from exc
        if resumed.done:
            note(
                f"{PROG} predict: resuming {plan.out}: {resumed.done} of {len(ids)} images "
                "already done",
                file=sys.stderr,
            )
        blocks = [(tuple(block.positions), block.todo) for block in run.blocks]
    else:
        blocks = [
            (tuple(range(start, min(start + args.batch_size, len(ids)))),) * 2
            for start in range(0, len(ids), args.batch_size)
        ]
    printed = _Printed(args.json) if run is None else None
    todo_count = sum(len(todo) for _, todo in blocks)
    desc = PROG if not dist.sharded else f"{PROG} (rank {dist.rank})"
    errors = 0
    loaded_blocks = load_blocks(
        [item.path for item in plan.inputs],
        [positions for positions, _ in blocks],
        predictor.preprocessing,
        workers=plan.workers,
        keep_images=bool(plan.drawings),
        pin_memory=predictor.device.type == "cuda",
    )
    with (
        contextlib.closing(loaded_blocks),
        run.writing() if run is not None else contextlib.nullcontext() as writer,
        tqdm(total=todo_count, desc=desc, unit="img", file=sys.stderr, disable=args.quiet) as bar,
    ):
        for (_, todo), loaded in zip(blocks, loaded_blocks, strict=True):
            wanted = set(todo)
            graphs: dict[int, SceneGraph] = {}
            for members, inputs in loaded.batches:
                if wanted.intersection(members):  # a batch done before is not computed again
                    graphs.update(zip(members, predictor.predict_inputs(inputs), strict=True))
            for position in todo:
                item = plan.inputs[position]
                graph = graphs.get(position)
                if graph is None:
                    error = loaded.errors[position]
                    errors += 1
                    tqdm.write(f"{PROG} predict: skipped {item.path}: {error}", file=sys.stderr)
                    row: dict[str, Any] = {"id": item.id, "image": item.path, "error": error}
                else:
                    row = _graph_row(item, graph, loaded.images.get(position), plan)
                if writer is not None:
                    writer.write(row)
                else:
                    assert printed is not None
                    printed.write(row, graph)
                bar.update()
    written = todo_count
    if run is not None:
        finished = run.finish()  # every rank's rows merged into --out, in input order
        errors, written = finished.errors, finished.written
    elif printed is not None:
        printed.close()
    if errors and dist.is_main:
        where = f" (error rows in {plan.out}; rerun to retry them)" if plan.out else ""
        return report_error_rows(
            f"{PROG} predict", errors, f"of {written} images could not be read", where
        )
    if plan.out is not None:
        note(f"{PROG} predict: {written} graphs written to {plan.out}", file=sys.stderr)
    return exit_status(errors)


def _graph_row(
    item: ImageInput, graph: SceneGraph, image: Image.Image | None, plan: _PredictPlan
) -> dict[str, Any]:
    """``{"id", "image", **graph.to_dict(), "drawing"?}``, drawing the graph when asked."""
    row: dict[str, Any] = {"id": item.id, "image": item.path, **graph.to_dict()}
    if plan.drawings:
        from egtr.drawing import draw_scene_graph

        assert image is not None
        row["drawing"] = str(draw_scene_graph(image, graph, plan.drawings[item.id]))
    return row


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """``print`` under ``--quiet``."""


def _print_summary(name: str, triplets: list[tuple[str, str, str, float]], out: IO[str]) -> None:
    out.write(f"{name}: {len(triplets)} relations\n")
    for subj, pred, obj, score in triplets[:10]:
        out.write(f"  {score:.3f}  {subj} {pred} {obj}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
