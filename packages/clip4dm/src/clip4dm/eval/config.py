"""The configuration of an evaluation run, and the benchmark defaults it resolves to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip4dm.defaults import DEFAULT_MODEL, Mode
from clip4dm.eval.errors import DataError, EvalError
from clip4dm.eval.nli import DEFAULT_NLI_MODEL
from clip4dm.eval.samples import Benchmark
from vl_core.files import file_fingerprint

__all__ = [
    "EvalConfig",
    "Method",
    "fingerprint",
    "identity",
    "input_fingerprints",
    "resolve_method",
]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. ``mode``, ``epsilon``, ``layers`` and ``template`` default to
    the benchmark's setting in the paper; ``nli_model=None`` skips the NLI score.
    ``choose_epsilon_on``: validation data (same benchmark and images) on which epsilon is chosen
    from ``epsilon_grid`` (default `clip4dm.eval.epsilon.DEFAULT_EPSILON_GRID`), instead of
    ``epsilon``; see `clip4dm.eval.epsilon`. ``overwrite`` starts the output directory over
    (also when it holds a run over other inputs or settings)."""

    benchmark: str
    data: str
    out: str
    images: str | None = None
    references: str | None = None
    model: str = DEFAULT_MODEL
    mode: Mode | None = None
    epsilon: float | None = None
    layers: int | None = None
    template: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    use_references: bool = True
    nli_model: str | None = DEFAULT_NLI_MODEL
    nli_batch_size: int = 16
    verify_crc: bool = True
    limit: int | None = None
    choose_epsilon_on: str | None = None
    epsilon_grid: tuple[float, ...] | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Method:
    """The method settings of a run, with the benchmark's defaults filled in."""

    mode: Mode
    epsilon: float
    layers: int
    template: str


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _data_name(data: str) -> str:
    path = Path(data).expanduser()
    return str(path.resolve()) if path.exists() else data


def fingerprint(data: str) -> dict[str, Any] | None:
    """Size and SHA-256 of a data file; for a directory (a saved dataset), of its files' paths
    and contents; ``None`` for a name that is not a path (a hub data set id).

    Raises `DataError` when the files cannot be read.
    """
    path = Path(data).expanduser()
    try:
        if path.is_file():
            return file_fingerprint(path)
        if not path.is_dir():
            return None
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found = file_fingerprint(file)
            digest.update(f"{file.relative_to(path).as_posix()}\0{found['sha256']}\n".encode())
        return {"files": len(files), "sha256": digest.hexdigest()}
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc


def input_fingerprints(config: EvalConfig) -> dict[str, Any]:
    """Fingerprints of the run's input files (``data``, and ``references`` when given), so that a
    resume over changed inputs is noticed. Raises `DataError` when they cannot be read."""
    found = {"data_fingerprint": fingerprint(config.data)}
    if config.references is not None:
        found["references_fingerprint"] = fingerprint(config.references)
    return found


def identity(config: EvalConfig, bench: Benchmark, method: Method) -> dict[str, Any]:
    """The settings a resumed run must share with the rows already written (recorded in
    ``result.json`` and, with `input_fingerprints`, in ``run.json``)."""
    return {
        "benchmark": bench.name,
        "data": _data_name(config.data),
        "images": _absolute(config.images),
        "references": _absolute(config.references),
        "model": config.model,
        "mode": method.mode,
        "epsilon": method.epsilon,
        "layers": method.layers,
        "template": method.template,
        "dtype": config.dtype,
        "use_references": config.use_references,
        "nli_model": config.nli_model if bench.nli else None,
    }


def resolve_method(config: EvalConfig, bench: Benchmark) -> Method:
    """The method settings of ``config`` for ``bench``, its defaults filled in.

    Raises `EvalError` for options that do not fit the benchmark.
    """
    if config.batch_size < 1:
        raise EvalError(f"batch size must be >= 1, got {config.batch_size}")
    if config.limit is not None and config.limit < 1:
        raise EvalError(f"limit must be >= 1, got {config.limit}")
    if bench.needs_images and config.images is None:
        raise EvalError(f"{bench.name} needs --images-root DIR ({bench.data_help})")
    if config.references is not None and bench.name != "foil":
        raise EvalError("--references (COCO captions) is for foil; the others carry their own")
    layers = bench.layers if config.layers is None else config.layers
    if layers < 1:
        raise EvalError(f"layers must be >= 1, got {layers}")
    return Method(
        mode=bench.mode if config.mode is None else config.mode,
        epsilon=bench.epsilon if config.epsilon is None else config.epsilon,
        layers=layers,
        template=bench.template if config.template is None else config.template,
    )
