"""Evaluation of CLIP4DM on FOIL, nocaps-FOIL, HAT, SeeTRUE-Feedback and Rich-HF (spec §4).

``clip4dm eval BENCHMARK --data ... --out DIR`` (or `run_eval`) loads a benchmark through the
registry, scores it, and writes ``samples.jsonl`` and ``result.json``; see docs/clip4dm-benchmarks.md.
"""

from __future__ import annotations

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
