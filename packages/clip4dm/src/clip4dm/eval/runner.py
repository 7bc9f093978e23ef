"""One evaluation run: load a benchmark, score every sample, write ``samples.jsonl`` and ``result.json``.

The output directory holds ``run.json`` (the run manifest: the settings and the fingerprints of the
input files, checked when a run resumes), ``samples.jsonl`` (one row per sample, appended as it is
scored) and, at the end, ``result.json`` (metrics, per-group metrics, configuration, model
identity, package versions). Rerunning the same command skips finished samples and retries error
rows; a resume over changed inputs or settings is refused unless ``overwrite``, which starts over.
Under ``torchrun`` each rank scores every N-th batch into ``.shards/rank-K.jsonl``; rank 0 merges
the shards and computes the metrics, so a sharded run writes the same rows and metrics as a single
process (batches are identical).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip4dm.detector import CLIP4DM
from clip4dm.eval._scoring import Scorer
from clip4dm.eval.config import EvalConfig, identity, input_fingerprints, resolve_method
from clip4dm.eval.errors import EvalError
from clip4dm.eval.metrics import Outcome, summarise, summarise_groups
from clip4dm.eval.nli import NLIScorer
from clip4dm.eval.samples import Benchmark, DataSource, Record, get_benchmark
from clip4dm.rows import is_error, upgrade
from vl_core import environment_report
from vl_core.distributed import Dist, DistributedError, process_group
from vl_core.files import (
    OutputExistsError,
    ResultsFileError,
    RowWriter,
    atomic_rewrite_rows,
    check_manifest,
    id_key,
    read_results,
    refuse_input_as_output,
    write_json,
)

__all__ = ["RESULT", "RUN", "SAMPLES", "EvalSummary", "run_eval"]

SAMPLES = "samples.jsonl"
RESULT = "result.json"
RUN = "run.json"
SHARDS = ".shards"
MAX_LISTED_ERRORS = 100
VERSIONED = ("clip4dm", "vl-core", "torch", "transformers", "open_clip_torch", "numpy", "pillow")


@dataclass
class EvalSummary:
    """What rank 0 returns: the ``result.json`` content and what this run did (samples scored,
    error rows written and samples already done; notes for the user)."""

    result: dict[str, Any]
    out_dir: Path
    scored: int = 0
    errors: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def error_rows(self) -> int:
        """Samples of the run (this and earlier invocations) that are error rows."""
        return int(self.result["counts"]["errors"])


# -- output directory ----------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The result and error rows of a JSONL file of this run (a torn last line is left out), with
    the names of earlier versions upgraded. Raises `EvalError` for a file that is not ours."""
    try:
        return [upgrade(row) for row in read_results(path, repair=False, retry_errors=False).rows]
    except ResultsFileError as exc:
        raise EvalError(str(exc)) from exc


def _merge_shards(out: Path) -> None:
    """Append the rows of ``.shards/*`` not yet in ``samples.jsonl`` to it, then remove them."""
    shard_dir = out / SHARDS
    if not shard_dir.is_dir():
        return
    samples = out / SAMPLES
    known = {id_key(row["id"]) for row in _read_rows(samples)}
    with RowWriter(samples) as writer:
        for part in sorted(shard_dir.glob("rank-*.jsonl")):
            for row in _read_rows(part):
                key = id_key(row["id"])
                if key not in known:
                    known.add(key)
                    writer.write(row)
            part.unlink()
    shutil.rmtree(shard_dir, ignore_errors=True)


def _existing_rows(samples: Path) -> tuple[set[str], int, list[str]]:
    """Finished ids, error rows taken out (to retry) and repairs of ``samples.jsonl``."""
    try:
        found = read_results(samples)
    except ResultsFileError as exc:
        raise EvalError(str(exc)) from exc
    return found.done, found.retried, found.repaired


def _accept_legacy_manifest(run_file: Path, settings: Mapping[str, Any]) -> None:
    """An earlier version's ``run.json`` is ``{"config": settings, "model": ...}``: when its
    settings are this run's, make way for today's manifest (its inputs were not fingerprinted
    then); otherwise raise `EvalError` naming the settings that differ."""
    try:
        old = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # missing, or unreadable: check_manifest reports it
    if not isinstance(old, dict) or not set(old) <= {"config", "model"}:
        return
    previous = old.get("config")
    if not isinstance(previous, dict):
        return
    changed = [key for key in settings if previous.get(key) != settings[key]]
    if changed:
        details = "; ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise EvalError(
            f"{run_file.parent} holds a run with other settings ({details}): use another --out, "
            "or pass --overwrite to start over"
        )
    run_file.unlink()


def _prepare(
    out: Path, settings: Mapping[str, Any], inputs: Mapping[str, Any], overwrite: bool
) -> tuple[list[str], list[str]]:
    """Rank 0: check (or write) ``run.json``, fold leftover shards into ``samples.jsonl`` and drop
    its error rows (to retry them); returns the finished ids and notes for the user.

    With ``overwrite`` the directory's run is started over. Raises `EvalError` when the directory
    holds files this command did not write, or a run over other inputs or settings.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create output directory {str(out)!r}: {exc}") from exc
    run_file, samples, result = out / RUN, out / SAMPLES, out / RESULT
    try:
        if not overwrite:
            read_results(samples, repair=False, retry_errors=False)  # a foreign file is refused
            if result.exists() and not run_file.exists():
                raise OutputExistsError(
                    f"{str(result)!r} was not written by a clip4dm eval run recorded here: "
                    "choose another --out, or pass --overwrite to replace it"
                )
            _accept_legacy_manifest(run_file, settings)
        # Without rows yet, a manifest left by a run that failed early describes nothing.
        fresh = overwrite or not (samples.exists() or (out / SHARDS).is_dir())
        check_manifest(run_file, {**settings, **inputs}, overwrite=fresh)
    except ResultsFileError as exc:
        raise EvalError(f"{out}: {exc}") from exc
    if overwrite:
        samples.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
        shutil.rmtree(out / SHARDS, ignore_errors=True)
    notes: list[str] = []
    _, retried, repaired = _existing_rows(samples)  # repair a torn last line before appending
    _merge_shards(out)
    done_keys, retried_shards, repaired_shards = _existing_rows(samples)
    for note in repaired + repaired_shards:
        notes.append(f"repaired {SAMPLES} ({note}); its sample is computed again")
    if retried + retried_shards:
        notes.append(f"retrying {retried + retried_shards} error row(s) of the previous run")
    done = sorted(key for key in (json.loads(k) for k in done_keys) if isinstance(key, str))
    return done, notes


def _previous_model(out: Path) -> dict[str, Any] | None:
    """The model identity an earlier invocation of this run recorded in ``result.json``."""
    try:
        model = json.loads((out / RESULT).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return model if isinstance(model, dict) else None


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    """What each rank tells the others when its share is done."""

    failure: str | None
    model: dict[str, Any] | None
    scored: int
    errors: int


def _finish(
    out: Path,
    selected: Sequence[Record],
    bench: Benchmark,
    config: EvalConfig,
    settings: Mapping[str, Any],
    model: dict[str, Any] | None,
    info: Dist,
) -> dict[str, Any]:
    """Rank 0: merge shards, order ``samples.jsonl`` as the data set, write ``result.json``."""
    _merge_shards(out)
    samples = out / SAMPLES
    by_id: dict[str, dict[str, Any]] = {}
    for row in _read_rows(samples):
        kept = by_id.get(row["id"])
        if kept is None or (is_error(kept) and not is_error(row)):
            by_id[row["id"]] = row
    order = [record.id for record in selected]
    wanted = set(order)
    chosen = [by_id[i] for i in order if i in by_id]
    others = [row for key, row in by_id.items() if key not in wanted]
    atomic_rewrite_rows(samples, [json.dumps(r, ensure_ascii=False) for r in chosen + others])

    outcomes = [Outcome.from_row(row) for row in chosen if not is_error(row)]
    errors = [row for row in chosen if is_error(row)]
    result: dict[str, Any] = {
        "benchmark": bench.name,
        "title": bench.title,
        "metrics": summarise(outcomes, bench),
        "group_by": bench.group_by,
        "groups": summarise_groups(outcomes, bench) if bench.group_by else {},
        "counts": {
            "samples": len(order),
            "scored": len(outcomes),
            "errors": len(errors),
            "missing": len(order) - len(chosen),
        },
        "errors": [{"id": r["id"], "error": r["error"]} for r in errors[:MAX_LISTED_ERRORS]],
        "config": {
            **settings,
            "device": config.device,
            "batch_size": config.batch_size,
            "limit": config.limit,
            "verify_crc": config.verify_crc,
        },
        "model": model or _previous_model(out) or {"name": config.model},
        "versions": environment_report(VERSIONED),
        "run": {"world_size": info.world_size, "samples": SAMPLES},
    }
    write_json(out / RESULT, result)
    return result


def run_eval(
    config: EvalConfig,
    *,
    progress: bool = True,
    detector: CLIP4DM | None = None,
    nli: NLIScorer | None = None,
) -> EvalSummary | None:
    """Run (or resume) an evaluation; returns the summary on rank 0 and ``None`` on other ranks.

    ``detector``/``nli`` may be given already loaded (the detector with the run's method
    settings); otherwise they are loaded when the first batch needs them, so a finished run is
    summarised without loading any model. With ``config.choose_epsilon_on`` the run first scores
    the validation data and chooses epsilon (`clip4dm.eval.epsilon.run_eval_choosing_epsilon`).

    Raises `EvalError` (or its `DataError`) for options that do not fit, unusable data, an output
    directory holding files this command did not write or a run over other inputs or settings,
    a model that cannot be loaded, and a failure on another rank.
    """
    if config.choose_epsilon_on is not None:
        from clip4dm.eval.epsilon import run_eval_choosing_epsilon

        return run_eval_choosing_epsilon(config, progress=progress, detector=detector, nli=nli)
    try:
        bench = get_benchmark(config.benchmark)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    method = resolve_method(config, bench)
    if detector is not None:
        given = (detector.mode, detector.epsilon, detector.layers, detector.template)
        if given != (method.mode, method.epsilon, method.layers, method.template):
            raise EvalError(f"the given detector's settings {given} differ from the run's {method}")
    settings = identity(config, bench, method)
    out = Path(config.out).expanduser()
    inputs = [config.data] + ([config.references] if config.references else [])
    try:
        refuse_input_as_output([out / name for name in (SAMPLES, RESULT, RUN)], inputs)
    except ResultsFileError as exc:
        raise EvalError(str(exc)) from exc
    source = DataSource(
        data=config.data,
        images=Path(config.images).expanduser() if config.images is not None else None,
        references=Path(config.references).expanduser() if config.references else None,
        verify_crc=config.verify_crc,
    )
    try:
        with process_group() as info:
            records = bench.load(source)
            selected = records[: config.limit] if config.limit is not None else records
            done_list, notes = info.run_on_main(
                lambda: _prepare(out, settings, input_fingerprints(config), config.overwrite),
                error=EvalError,
            )
            done = set(done_list)
            todo = [r for r in selected if r.id not in done]
            size = config.batch_size
            batches = [todo[i : i + size] for i in range(0, len(todo), size)]
            mine = batches[info.rank :: info.world_size]
            path = (
                out / SAMPLES if not info.sharded else out / SHARDS / f"rank-{info.rank:05d}.jsonl"
            )
            scorer = Scorer(bench, method, config, info, detector, nli)
            failure: str | None = None
            try:
                scorer.run(mine, path, progress)
            except EvalError as exc:
                failure = f"rank {info.rank}: {exc}" if info.sharded else str(exc)
            reports = info.all_gather(
                _Report(failure, scorer.model_identity(), scorer.scored, scorer.errors)
            )
            failures = [r.failure for r in reports if r.failure]
            if failures:
                raise EvalError(failures[0])
            model = next((r.model for r in reports if r.model is not None), None)
            result = info.run_on_main(
                lambda: _finish(out, selected, bench, config, settings, model, info),
                error=EvalError,
            )
    except DistributedError as exc:
        raise EvalError(str(exc)) from exc
    if not info.is_main:
        return None
    return EvalSummary(
        result=result,
        out_dir=out,
        scored=sum(r.scored for r in reports),
        errors=sum(r.errors for r in reports),
        skipped=len(selected) - len(todo),
        notes=notes,
    )
