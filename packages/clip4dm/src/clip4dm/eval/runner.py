"""One evaluation run: load a benchmark, score every sample, write ``samples.jsonl`` and ``result.json``.

The output directory holds ``run.json`` (the settings, checked when a run resumes),
``samples.jsonl`` (one row per sample, appended as it is scored) and, at the end, ``result.json``
(metrics, per-group metrics, configuration, model identity, package versions). Rerunning the same
command skips finished samples and retries error rows. Under ``torchrun`` each rank scores every
N-th batch into ``.shards/rank-K.jsonl``; rank 0 merges the shards and computes the metrics, so a
sharded run writes the same rows and metrics as a single process (batches are identical).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip4dm.detector import CLIP4DM
from clip4dm.eval._scoring import Scorer
from clip4dm.eval.config import EvalConfig, identity, resolve_method
from clip4dm.eval.distributed import Dist, process_group
from clip4dm.eval.errors import EvalError
from clip4dm.eval.metrics import Outcome, summarise, summarise_groups
from clip4dm.eval.nli import NLIScorer
from clip4dm.eval.samples import Benchmark, DataSource, Record, get_benchmark
from clip4dm.jsonl import ResultsFileError, RowWriter, atomic_rewrite, id_key, load_existing
from vl_core import environment_report

__all__ = ["EvalSummary", "run_eval"]

SAMPLES = "samples.jsonl"
RESULT = "result.json"
RUN = "run.json"
SHARDS = ".shards"
MAX_LISTED_ERRORS = 100
VERSIONED = ("clip4dm", "vl-core", "torch", "transformers", "open_clip_torch", "numpy", "pillow")


@dataclass
class EvalSummary:
    """What rank 0 returns: the ``result.json`` content and what this run did."""

    result: dict[str, Any]
    out_dir: Path
    scored: int = 0
    errors: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


# -- output directory ----------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The result/error rows of a JSONL file; unparsable lines are skipped."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows.append(row)
    return rows


def _merge_shards(out: Path) -> None:
    """Append the rows of ``.shards/*`` not yet in ``samples.jsonl`` to it, then remove them."""
    shard_dir = out / SHARDS
    if not shard_dir.is_dir():
        return
    samples = out / SAMPLES
    known = {id_key(row["id"]) for row in _read_rows(samples)}
    writer = RowWriter(samples)
    with contextlib.closing(writer):
        for part in sorted(shard_dir.glob("rank-*.jsonl")):
            for row in _read_rows(part):
                key = id_key(row["id"])
                if key not in known:
                    known.add(key)
                    writer.write(row)
            part.unlink()
    with contextlib.suppress(OSError):
        shard_dir.rmdir()


def _existing_rows(samples: Path) -> tuple[set[str], int, list[str]]:
    try:
        return load_existing(samples)
    except ResultsFileError as exc:
        raise EvalError(str(exc)) from exc


def _prepare(out: Path, settings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Rank 0: check or write ``run.json``, fold leftover shards into ``samples.jsonl`` and drop
    its error rows (to retry them); returns the finished ids and notes for the user."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create output directory {str(out)!r}: {exc}") from exc
    run_file = out / RUN
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise EvalError(f"{run_file} is unreadable ({exc}); delete it to start over") from exc
        changed = [k for k in settings if previous.get(k) != settings[k]]
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise EvalError(
                f"{out} holds a run with other settings ({details}): use another --out, "
                "or delete that directory to start over"
            )
    else:
        _write_json(run_file, {"config": dict(settings)})
    samples = out / SAMPLES
    notes: list[str] = []
    _, retried, dropped = _existing_rows(samples)  # repair a torn last line before appending
    _merge_shards(out)
    done_keys, retried_shards, dropped_shards = _existing_rows(samples)
    for note in dropped + dropped_shards:
        notes.append(f"dropped unusable line of {SAMPLES} ({note}); its sample is recomputed")
    if retried + retried_shards:
        notes.append(f"retrying {retried + retried_shards} error row(s) of the previous run")
    done = sorted(key for key in (json.loads(k) for k in done_keys) if isinstance(key, str))
    return done, notes


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    rows = _read_rows(samples)
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = by_id.get(row["id"])
        if kept is None or ("error" in kept and "error" not in row):
            by_id[row["id"]] = row
    order = [record.id for record in selected]
    wanted = set(order)
    chosen = [by_id[i] for i in order if i in by_id]
    others = [row for key, row in by_id.items() if key not in wanted]
    atomic_rewrite(samples, [json.dumps(r, ensure_ascii=False) for r in chosen + others])

    outcomes = [Outcome.from_row(row) for row in chosen if "error" not in row]
    errors = [row for row in chosen if "error" in row]
    run_file = out / RUN
    run_data = json.loads(run_file.read_text(encoding="utf-8"))
    if model is not None:
        run_data["model"] = model
        _write_json(run_file, run_data)
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
        "model": run_data.get("model", {"name": config.model}),
        "versions": environment_report(VERSIONED),
        "run": {"world_size": info.world_size, "samples": SAMPLES},
    }
    _write_json(out / RESULT, result)
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
    summarised without loading any model.
    """
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
    source = DataSource(
        data=config.data,
        images=Path(config.images).expanduser() if config.images is not None else None,
        references=Path(config.references).expanduser() if config.references else None,
        verify_crc=config.verify_crc,
    )
    with process_group() as info:
        records = bench.load(source)
        selected = records[: config.limit] if config.limit is not None else records
        done_list, notes = info.run_on_main(lambda: _prepare(out, settings))
        done = set(done_list)
        todo = [r for r in selected if r.id not in done]
        batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
        mine = batches[info.rank :: info.world_size]
        path = out / SAMPLES if not info.sharded else out / SHARDS / f"rank-{info.rank:05d}.jsonl"
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
            lambda: _finish(out, selected, bench, config, settings, model, info)
        )
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
