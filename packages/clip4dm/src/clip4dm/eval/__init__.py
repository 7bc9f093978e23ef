"""Evaluation of CLIP4DM on FOIL, nocaps-FOIL, HAT, SeeTRUE-Feedback and Rich-HF (spec §4).

``clip4dm eval BENCHMARK --data ... --out DIR`` (or `run_eval`) loads a benchmark through the
registry, scores it, and writes ``samples.jsonl`` and ``result.json``; see docs/clip4dm-benchmarks.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vl_core.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BadRecord": "clip4dm.eval.samples",
    "Benchmark": "clip4dm.eval.samples",
    "DEFAULT_NLI_MODEL": "clip4dm.eval.nli",
    "DataError": "clip4dm.eval.errors",
    "DataSource": "clip4dm.eval.samples",
    "EvalConfig": "clip4dm.eval.config",
    "EvalError": "clip4dm.eval.errors",
    "EvalSummary": "clip4dm.eval.runner",
    "GroundTruth": "clip4dm.eval.samples",
    "Judgement": "clip4dm.eval.samples",
    "NLIScorer": "clip4dm.eval.nli",
    "Outcome": "clip4dm.eval.metrics",
    "Phrase": "clip4dm.eval.hat",
    "Record": "clip4dm.eval.samples",
    "Sample": "clip4dm.eval.samples",
    "available_benchmarks": "clip4dm.eval.samples",
    "average_precision": "clip4dm.eval.metrics",
    "get_benchmark": "clip4dm.eval.samples",
    "localisation_accuracy": "clip4dm.eval.metrics",
    "lowest_phrase": "clip4dm.eval.hat",
    "merge_phrases": "clip4dm.eval.hat",
    "micro_prf": "clip4dm.eval.metrics",
    "pearson": "clip4dm.eval.metrics",
    "register_benchmark": "clip4dm.eval.samples",
    "richhf_tokens": "clip4dm.eval.richhf",
    "run_eval": "clip4dm.eval.runner",
    "spearman": "clip4dm.eval.metrics",
    "summarise": "clip4dm.eval.metrics",
}

__all__ = [
    "DEFAULT_NLI_MODEL",
    "BadRecord",
    "Benchmark",
    "DataError",
    "DataSource",
    "EvalConfig",
    "EvalError",
    "EvalSummary",
    "GroundTruth",
    "Judgement",
    "NLIScorer",
    "Outcome",
    "Phrase",
    "Record",
    "Sample",
    "available_benchmarks",
    "average_precision",
    "get_benchmark",
    "localisation_accuracy",
    "lowest_phrase",
    "merge_phrases",
    "micro_prf",
    "pearson",
    "register_benchmark",
    "richhf_tokens",
    "run_eval",
    "spearman",
    "summarise",
]

if TYPE_CHECKING:
    from clip4dm.eval.config import EvalConfig
    from clip4dm.eval.errors import DataError, EvalError
    from clip4dm.eval.hat import Phrase, lowest_phrase, merge_phrases
    from clip4dm.eval.metrics import (
        Outcome,
        average_precision,
        localisation_accuracy,
        micro_prf,
        pearson,
        spearman,
        summarise,
    )
    from clip4dm.eval.nli import DEFAULT_NLI_MODEL, NLIScorer
    from clip4dm.eval.richhf import richhf_tokens
    from clip4dm.eval.runner import EvalSummary, run_eval
    from clip4dm.eval.samples import (
        BadRecord,
        Benchmark,
        DataSource,
        GroundTruth,
        Judgement,
        Record,
        Sample,
        available_benchmarks,
        get_benchmark,
        register_benchmark,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
