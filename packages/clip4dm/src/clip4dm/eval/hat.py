"""HAT (ALOHa, Petryk et al. 2024): captions with word-level hallucination labels; phrase merging.

File: ``hat-trainval.json``, a list of ``{sample_id, caption, grounding: [[word, is_hallucinated],
...], contains_hallucination, image_path, references}``. Ground truth: the hallucinated words with
"." and "," stripped; none means aligned. A prediction is a phrase: selected words that are adjacent
among the caption's non-punctuation words are merged, and the phrase with the lowest mean score wins.
When the grounding words are the caption's whitespace-separated words, their positions are known
and ``LA_exact`` is reported too (every word of the predicted phrase is a hallucinated one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip4dm.alignment import is_punctuation
from clip4dm.eval._parse import (
    RecordError,
    as_object,
    get_field,
    get_id,
    get_str,
    get_str_list,
    image_path,
    parse_records,
    read_json,
)
from clip4dm.eval._positions import chunk_positions
from clip4dm.eval.errors import DataError
from clip4dm.eval.samples import (
    Benchmark,
    DataSource,
    GroundTruth,
    Judgement,
    Record,
    Sample,
    dedupe_ids,
    register_benchmark,
)
from clip4dm.results import Detection, WordScore

__all__ = ["HAT", "Phrase", "judge_phrase", "load_hat", "lowest_phrase", "merge_phrases"]


@dataclass(frozen=True)
class Phrase:
    """Adjacent selected words; its score is their mean."""

    words: tuple[WordScore, ...]

    @property
    def text(self) -> str:
        """The phrase's words joined by spaces."""
        return " ".join(w.word for w in self.words)

    @property
    def score(self) -> float:
        """The mean score of the phrase's words."""
        return sum(w.score for w in self.words) / len(self.words)


def merge_phrases(words: Sequence[WordScore], selected: Sequence[WordScore]) -> list[Phrase]:
    """``selected`` words grouped into phrases of words adjacent among the non-punctuation words
    of ``words`` (so "red, blue" is one phrase), in caption order."""
    position = {w.index: p for p, w in enumerate(w for w in words if not is_punctuation(w.word))}
    chosen = sorted((position[w.index], w) for w in selected if w.index in position)
    phrases: list[list[WordScore]] = []
    last = -2
    for pos, word in chosen:
        if pos == last:
            continue  # the same word selected twice
        if pos == last + 1 and phrases:
            phrases[-1].append(word)
        else:
            phrases.append([word])
        last = pos
    return [Phrase(tuple(p)) for p in phrases]


def lowest_phrase(phrases: Sequence[Phrase]) -> Phrase | None:
    """The phrase with the lowest mean score (the first one on ties); ``None`` if there is none."""
    return min(phrases, key=lambda p: p.score, default=None)


def _contiguous_in(part: Sequence[str], whole: Sequence[str]) -> bool:
    n = len(part)
    return n > 0 and any(list(whole[i : i + n]) == list(part) for i in range(len(whole) - n + 1))


def judge_phrase(sample: Sample, detection: Detection) -> Judgement:
    """The lowest phrase; correct when its words (lower-cased) appear, in order and adjacent, among
    the hallucinated words; exact when every word of it is at a hallucinated position (where the
    data gives the positions)."""
    best = lowest_phrase(merge_phrases(detection.words, detection.misaligned))
    prediction = best.text.lower() if best is not None else None
    truth = sample.ground_truth
    if truth.aligned:
        return Judgement(prediction)
    correct = best is not None and _contiguous_in(
        [w.word.lower() for w in best.words], [w.lower() for w in truth.words]
    )
    exact = None
    if truth.positions:
        exact = best is not None and all(w.index in truth.positions for w in best.words)
    return Judgement(prediction, correct=correct, exact=exact)


def _hallucinated_words(grounding: Any) -> tuple[str, ...]:
    if not isinstance(grounding, list):
        raise RecordError("'grounding' must be a list of [word, is_hallucinated] pairs")
    words: list[str] = []
    for position, pair in enumerate(grounding):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], bool | int)
        ):
            raise RecordError(f"'grounding'[{position}] must be [word, is_hallucinated]")
        if pair[1]:
            word = pair[0].replace(".", "").replace(",", "").strip()
            if word:
                words.append(word)
    return tuple(words)


def _hallucinated_positions(grounding: list[list[Any]], caption: str) -> tuple[int, ...]:
    """clip4dm's word positions of the hallucinated words, when the grounding words are the
    caption's whitespace-separated words (otherwise their positions are unknown: ``()``)."""
    if [pair[0] for pair in grounding] != caption.split():
        return ()
    return chunk_positions(caption, [k for k, pair in enumerate(grounding) if pair[1]])


def load_hat(source: DataSource) -> list[Record]:
    """One sample per entry (ids are the entries' ``sample_id``).

    Raises `DataError` when the file is not a JSON list; a malformed entry becomes an error record.
    """
    path = Path(source.data)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a JSON list of HAT entries")

    def fallback(index: int) -> list[str]:
        item = data[index]
        raw = item.get("sample_id") if isinstance(item, dict) else None
        ok = isinstance(raw, str | int) and not isinstance(raw, bool)
        return [str(raw) if ok else f"entry {index}"]

    def parse(index: int, item: Any, where: str) -> list[Record]:
        entry = as_object(item)
        sample_id = get_id(entry, "sample_id")
        where = f"{where} (sample_id {sample_id})"
        caption = get_str(entry, "caption").strip()
        image = get_str(entry, "image_path")
        grounding = get_field(entry, "grounding")
        words = _hallucinated_words(grounding)
        positions = _hallucinated_positions(grounding, caption) if words else ()
        return [
            Sample(
                id=sample_id,
                image=image_path(source.images, image, path.parent),
                caption=caption,
                ground_truth=GroundTruth(aligned=not words, words=words, positions=positions),
                references=tuple(get_str_list(entry, "references", required=False)),
                image_name=image,
                source=where,
            )
        ]

    return dedupe_ids(parse_records(data, lambda i: f"{path.name}: entry {i}", fallback, parse))


HAT = register_benchmark(
    Benchmark(
        name="hat",
        title="HAT",
        load=load_hat,
        judge=judge_phrase,
        mode="threshold",
        positive="misaligned",
        data_help="hat-trainval.json (ALOHa); --images-root: the COCO images its image_path names",
    )
)
