"""Choosing the threshold epsilon on a validation split: ``clip4dm eval --choose-epsilon-on VAL``.

The validation data (same benchmark, same ``--images-root``) is scored first, into ``OUT/validation/``
(a run of its own: resumable, with its own ``samples.jsonl`` and ``result.json`` at the benchmark's
epsilon). The word scores do not depend on epsilon, so every candidate epsilon of the grid
re-selects the misaligned words from the stored word scores (`clip4dm.scores.select_misaligned`,
threshold mode), judges them again and computes the benchmark's metrics. The chosen epsilon has
the best LA (rounded to 9 digits), ties broken by the better F-CLIPScore AP, then by grid order.
The evaluated data is then scored at that epsilon, and ``OUT/result.json`` gets an
``epsilon_selection`` entry: the validation data, the grid, each candidate's LA and AP, and the
validation metrics at the chosen epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clip4dm.detector import CLIP4DM
from clip4dm.eval.config import EvalConfig, Method, resolve_method
from clip4dm.eval.errors import EvalError
from clip4dm.eval.metrics import Outcome, summarise
from clip4dm.eval.nli import NLIScorer
from clip4dm.eval.runner import RESULT, SAMPLES, EvalSummary, run_eval
from clip4dm.eval.samples import Benchmark, DataSource, Sample, get_benchmark
from clip4dm.results import Detection
from clip4dm.scores import f_clip_score, select_misaligned
from vl_core.distributed import DistributedError, process_group
from vl_core.files import ResultsFileError, read_results, write_json

__all__ = [
    "DEFAULT_EPSILON_GRID",
    "VALIDATION",
    "EpsilonChoice",
    "choose_epsilon",
    "rejudge",
    "run_eval_choosing_epsilon",
]

#: Candidates searched by default: -1e-6 … -5e-2 (1, 2, 5 per decade), then 0. Word scores are
#: gradient × attention and scale with the model: the paper's -5e-5 suits ViT-B/32, small models
#: need coarser thresholds.
DEFAULT_EPSILON_GRID: tuple[float, ...] = (
    *(-1e-6, -2e-6, -5e-6, -1e-5, -2e-5, -5e-5, -1e-4, -2e-4, -5e-4),
    *(-1e-3, -2e-3, -5e-3, -1e-2, -2e-2, -5e-2, 0.0),
)
#: The subdirectory of ``--out`` holding the validation run.
VALIDATION = "validation"
CRITERION = "best LA (rounded to 9 digits), then best F-CLIPScore AP, then grid order"


@dataclass(frozen=True)
class EpsilonChoice:
    """The chosen ``epsilon``, the ``grid`` it came from, each candidate's ``{"epsilon", "LA",
    "AP_F-CLIPScore"}`` (grid order), and the benchmark's metrics on the validation data at the
    chosen epsilon. ``data`` names the validation data."""

    epsilon: float
    grid: tuple[float, ...]
    candidates: tuple[Mapping[str, Any], ...]
    validation: Mapping[str, Any]
    data: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``epsilon_selection`` entry of ``result.json`` (JSON-ready)."""
        return {
            "data": self.data,
            "out": VALIDATION,
            "grid": list(self.grid),
            "criterion": CRITERION,
            "epsilon": self.epsilon,
            "candidates": [dict(c) for c in self.candidates],
            "validation": dict(self.validation),
        }


def rejudge(sample: Sample, row: Mapping[str, Any], epsilon: float, bench: Benchmark) -> Outcome:
    """The `Outcome` of a scored row (of ``samples.jsonl``) had it been detected in threshold mode
    at ``epsilon``: the words below ``epsilon`` are selected again from the row's word scores, and
    F-CLIPScore and the judgement follow. Raises ``ValueError`` (or ``KeyError``) for a row
    that is not a result row."""
    detection = Detection.from_dict({**row, "caption": sample.caption})
    chosen, negative_sum = select_misaligned(detection.words, "threshold", epsilon)
    detection = replace(
        detection,
        misaligned=chosen,
        negative_sum=negative_sum,
        f_clip_score=f_clip_score(negative_sum, detection.cosine),
        mode="threshold",
    )
    judgement = bench.judge(sample, detection)  # word spans come with the row
    return replace(
        Outcome.from_row(row),
        f_clip_score=detection.f_clip_score,
        correct=judgement.correct,
        exact=judgement.exact,
        tp=judgement.tp,
        fp=judgement.fp,
        fn=judgement.fn,
    )


def _rank(metrics: Mapping[str, Any]) -> tuple[float, float]:
    la = metrics.get("LA")
    ap = metrics.get("AP", {}).get("F-CLIPScore")
    return (
        round(la, 9) if la is not None else -math.inf,
        ap if ap is not None else -math.inf,
    )


def choose_epsilon(
    scored: Sequence[tuple[Sample, Mapping[str, Any]]],
    bench: Benchmark,
    grid: Sequence[float] = DEFAULT_EPSILON_GRID,
    *,
    data: str = "",
) -> EpsilonChoice:
    """The grid epsilon with the best LA on ``scored`` (validation samples and their result rows),
    ties broken by the better F-CLIPScore AP, then by grid order.

    Raises `EvalError` when ``grid`` is empty or there is no scored sample to choose on.
    """
    if not grid:
        raise EvalError("the epsilon grid is empty")
    if not scored:
        raise EvalError(f"no validation sample was scored in {data or 'the validation data'}")
    candidates: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], float, dict[str, Any]] | None = None
    for epsilon in grid:
        outcomes = [rejudge(s, row, epsilon, bench) for s, row in scored]
        metrics = summarise(outcomes, bench)
        candidates.append(
            {
                "epsilon": epsilon,
                "LA": metrics.get("LA"),
                "AP_F-CLIPScore": metrics["AP"]["F-CLIPScore"],
            }
        )
        rank = _rank(metrics)
        if best is None or rank > best[0]:
            best = (rank, epsilon, metrics)
    assert best is not None
    return EpsilonChoice(
        epsilon=float(best[1]),
        grid=tuple(float(e) for e in grid),
        candidates=tuple(candidates),
        validation=best[2],
        data=data,
    )


def _check(config: EvalConfig, bench: Benchmark, method: Method) -> tuple[float, ...]:
    """The grid; option errors raise `EvalError` (before any file is touched)."""
    grid = DEFAULT_EPSILON_GRID if config.epsilon_grid is None else tuple(config.epsilon_grid)
    if config.epsilon is not None:
        raise EvalError("--epsilon and --choose-epsilon-on exclude each other: give one of them")
    if method.mode != "threshold":
        raise EvalError(
            f"--choose-epsilon-on chooses the threshold of mode 'threshold', but {bench.name} "
            f"runs in mode {method.mode!r}: add --mode threshold"
        )
    if not bench.localisation or bench.nli:
        raise EvalError(
            f"--choose-epsilon-on ranks epsilons by localisation accuracy, which {bench.name} "
            "does not report"
        )
    if not grid or not all(math.isfinite(e) for e in grid):
        raise EvalError(f"the epsilon grid must be a non-empty list of numbers, got {grid}")
    assert config.choose_epsilon_on is not None
    val = Path(config.choose_epsilon_on).expanduser()
    if not val.exists():
        raise EvalError(f"validation data {config.choose_epsilon_on!r} does not exist")
    if val.resolve() == Path(config.data).expanduser().resolve():
        raise EvalError(
            "--choose-epsilon-on names the evaluated data itself: choose epsilon on a "
            "validation split"
        )
    return grid


def _detector(given: CLIP4DM | None, method: Method, epsilon: float) -> CLIP4DM | None:
    """The given detector's backbone with the run's method settings at ``epsilon``."""
    if given is None:
        return None
    if (given.layers, given.template) != (method.layers, method.template):
        raise EvalError(
            f"the given detector's settings {(given.layers, given.template)} differ from the "
            f"run's {(method.layers, method.template)}"
        )
    return CLIP4DM(
        given.backbone,
        mode=method.mode,
        epsilon=epsilon,
        layers=method.layers,
        template=method.template,
    )


def _choose_from_run(
    val_config: EvalConfig, bench: Benchmark, method: Method, grid: Sequence[float]
) -> EpsilonChoice:
    """Rank 0: the choice from the validation run's rows (in the validation data's order)."""
    source = DataSource(
        data=val_config.data,
        images=Path(val_config.images).expanduser() if val_config.images is not None else None,
        references=Path(val_config.references).expanduser() if val_config.references else None,
        verify_crc=val_config.verify_crc,
    )
    records = bench.load(source)
    selected = records[: val_config.limit] if val_config.limit is not None else records
    try:
        found = read_results(Path(val_config.out) / SAMPLES, repair=False)
    except ResultsFileError as exc:
        raise EvalError(str(exc)) from exc
    rows = {str(row["id"]): row for row in found.rows}
    scored = [(r, rows[r.id]) for r in selected if isinstance(r, Sample) and r.id in rows]
    data = str(Path(val_config.data).expanduser().resolve())
    return choose_epsilon(scored, bench, grid, data=data)


def run_eval_choosing_epsilon(
    config: EvalConfig,
    *,
    progress: bool = True,
    detector: CLIP4DM | None = None,
    nli: NLIScorer | None = None,
) -> EvalSummary | None:
    """`run_eval` with epsilon chosen on ``config.choose_epsilon_on`` (see the module docstring).

    Returns the main run's summary on rank 0 (its ``result`` with ``epsilon_selection``) and
    ``None`` on other ranks. ``detector``, if given, lends its backbone to both runs. Raises
    `EvalError` for options that do not fit (``--epsilon`` given too, a mode other than
    threshold, a benchmark without LA, a missing validation file) and whatever `run_eval` raises.
    """
    try:
        bench = get_benchmark(config.benchmark)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    method = resolve_method(config, bench)
    grid = _check(config, bench, method)
    out = Path(config.out).expanduser()
    val_config = replace(
        config,
        data=str(config.choose_epsilon_on),
        out=str(out / VALIDATION),
        choose_epsilon_on=None,
        epsilon_grid=None,
    )
    try:
        with process_group() as info:  # one group for both runs (they join it, not re-create it)
            validation = run_eval(
                val_config, progress=progress, detector=_detector(detector, method, method.epsilon)
            )
            choice = info.run_on_main(
                lambda: _choose_from_run(val_config, bench, method, grid), error=EvalError
            )
            main_config = replace(
                config, epsilon=choice.epsilon, choose_epsilon_on=None, epsilon_grid=None
            )
            summary = run_eval(
                main_config,
                progress=progress,
                detector=_detector(detector, method, choice.epsilon),
                nli=nli,
            )
    except DistributedError as exc:
        raise EvalError(str(exc)) from exc
    if summary is not None:
        summary.result["epsilon_selection"] = choice.to_dict()
        write_json(out / RESULT, summary.result)
        la = choice.validation.get("LA")
        shown = "n/a" if la is None else f"{la:.4f}"
        summary.notes[:0] = [
            *(validation.notes if validation is not None else []),
            f"epsilon {choice.epsilon:g} chosen on {config.choose_epsilon_on} (validation "
            f"LA {shown}; rows in {out / VALIDATION})",
        ]
    return summary
