"""The common sample type of the five benchmarks, and the registry that maps a name to its loader.

A loader reads a benchmark's public files and returns, in a fixed order, one `Sample` per
(image, caption) pair or one `BadRecord` per record it could not read — so a malformed record
becomes an error row of the run instead of stopping it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from clip4dm.batch import ImageRef
from clip4dm.defaults import DEFAULT_EPSILON, DEFAULT_LAYERS, DEFAULT_TEMPLATE, Mode
from clip4dm.results import Detection

__all__ = [
    "BadRecord",
    "Benchmark",
    "DataSource",
    "GroundTruth",
    "ImageRef",
    "Judgement",
    "Record",
    "Sample",
    "available_benchmarks",
    "get_benchmark",
    "register_benchmark",
]

JSONValue: TypeAlias = Any


@dataclass(frozen=True)
class GroundTruth:
    """What the benchmark says about a caption; ``aligned`` for an unaltered caption.

    ``words``: the misaligned words (FOIL/nocaps-FOIL: the foil word; HAT: the hallucinated words).
    ``tokens``: Rich-HF's misaligned ``(index, token)`` pairs over the prompt's Rich-HF tokens.
    ``text``: SeeTRUE-Feedback's description of the misalignment.
    ``positions``: where the data says which words changed, the misaligned words' positions among
    the caption's words as clip4dm counts them (`clip4dm.results.WordScore.index`).
    """

    aligned: bool
    words: tuple[str, ...] = ()
    tokens: tuple[tuple[int, str], ...] = ()
    text: str | None = None
    positions: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON form; empty fields are left out."""
        out: dict[str, JSONValue] = {"aligned": self.aligned}
        if self.words:
            out["words"] = list(self.words)
        if self.tokens:
            out["tokens"] = [[i, t] for i, t in self.tokens]
        if self.text is not None:
            out["text"] = self.text
        if self.positions:
            out["positions"] = list(self.positions)
        return out


@dataclass(frozen=True)
class Sample:
    """One (image, caption) pair of a benchmark with its ground truth.

    ``id`` is unique within the data set and stable across runs (the key of resumption);
    ``group`` is the per-group split (nocaps domain, SeeTRUE source); ``references`` are reference
    captions (for RefCLIPScore); ``human_score`` is a human rating (Rich-HF
    ``misalignment_score``);
    ``image_name`` names the image in rows and errors; ``source`` names the file and record;
    ``pair`` names the image a FOIL-style caption belongs to (the pairwise metric compares each
    misaligned caption with the aligned captions of the same ``pair``).
    """

    id: str
    image: ImageRef
    caption: str
    ground_truth: GroundTruth
    group: str | None = None
    references: tuple[str, ...] = ()
    human_score: float | None = None
    image_name: str = ""
    source: str = ""
    meta: Mapping[str, JSONValue] = field(default_factory=dict)
    pair: str | None = None


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read; ``error`` names the file, the record and the problem."""

    id: str
    source: str
    error: str


Record: TypeAlias = Sample | BadRecord


@dataclass(frozen=True)
class DataSource:
    """Where a benchmark's files are: ``data`` (a file, directory or dataset id), the images
    directory, COCO reference captions (FOIL), and whether to verify TFRecord checksums."""

    data: str
    images: Path | None = None
    references: Path | None = None
    verify_crc: bool = True


@dataclass(frozen=True)
class Judgement:
    """A detection read the benchmark's way: the prediction (JSON), whether it localises the
    misalignment (``None`` when not applicable, e.g. aligned captions), Rich-HF token counts, and
    ``exact``: whether the predicted words are at the misaligned positions (``None`` when the
    ground truth has no `GroundTruth.positions`)."""

    prediction: JSONValue
    correct: bool | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    exact: bool | None = None


Loader: TypeAlias = Callable[[DataSource], list[Record]]
Judge: TypeAlias = Callable[[Sample, Detection], Judgement]
"""Reads a detection the benchmark's way; word positions come from the detection's own spans."""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its loader, how predictions are judged, its metrics and the paper's settings.

    ``positive`` is the class average precision ranks first: ``"aligned"`` captions by score, or
    ``"misaligned"`` captions by negated score.
    """

    name: str
    title: str
    load: Loader
    judge: Judge
    mode: Mode
    positive: Literal["aligned", "misaligned"]
    data_help: str
    localisation: bool = True
    token_prf: bool = False
    correlation: bool = False
    nli: bool = False
    group_by: str | None = None
    needs_images: bool = True
    epsilon: float = DEFAULT_EPSILON
    layers: int = DEFAULT_LAYERS
    template: str = DEFAULT_TEMPLATE
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, Benchmark] = {}
_ALIASES: dict[str, str] = {}
_BUILTIN_MODULES = ("foil", "nocaps", "hat", "seetrue", "richhf")


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Make ``benchmark`` available by its name and aliases (a later registration replaces);
    returns it."""
    _REGISTRY[benchmark.name] = benchmark
    for alias in benchmark.aliases:
        _ALIASES[alias] = benchmark.name
    return benchmark


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"clip4dm.eval.{module}")


def available_benchmarks() -> list[str]:
    """Names of the registered benchmarks (the five built-in ones first)."""
    _load_builtins()
    order = ("foil", "nocaps-foil", "hat", "seetrue-feedback", "richhf")
    return sorted(_REGISTRY, key=lambda n: order.index(n) if n in order else len(order))


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as ``name`` (or an alias; case-insensitive).

    Raises ``ValueError`` naming the known benchmarks when there is none of that name.
    """
    _load_builtins()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {name!r}; choose one of {', '.join(available_benchmarks())}"
        ) from None


def dedupe_ids(records: Sequence[Record]) -> list[Record]:
    """``records`` with unique ids: a repeated id gets a ``#N`` suffix, and a repeated sample
    becomes a `BadRecord` (ids key the rows of a run, so they must be unique)."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    out: list[Record] = []
    for record in records:
        if record.id in seen:
            counts[record.id] = counts.get(record.id, 1) + 1
            new_id = f"{record.id}#{counts[record.id]}"
            error = (
                record.error
                if isinstance(record, BadRecord)
                else f"{record.source}: duplicate id {record.id!r} (first in {seen[record.id]})"
            )
            record = BadRecord(new_id, record.source, error)
        else:
            seen[record.id] = record.source
        out.append(record)
    return out
