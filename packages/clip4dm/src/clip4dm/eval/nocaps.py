"""nocaps-FOIL (ALOHa, Petryk et al. 2024): nocaps validation captions with one object foiled.

File: ``nocaps-val-foil.json``, a list of ``{image_path, references, baseline, foil,
replacement: [original word, foil word], domain}``. Each entry gives TWO samples: the foil caption
(ground truth ``replacement[1]``; aligned if the replacement changed nothing) and the baseline
caption (aligned). Ids are ``"<entry>/foil"`` and ``"<entry>/baseline"``; groups are the domains.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from clip4dm.eval._parse import (
    RecordError,
    as_object,
    get_str,
    get_str_list,
    image_path,
    parse_records,
    read_json,
)
from clip4dm.eval.errors import DataError
from clip4dm.eval.foil import judge_word
from clip4dm.eval.samples import (
    Benchmark,
    DataSource,
    GroundTruth,
    Record,
    Sample,
    dedupe_ids,
    register_benchmark,
)

__all__ = ["NOCAPS_FOIL", "load_nocaps_foil"]


def load_nocaps_foil(source: DataSource) -> list[Record]:
    """Two samples per entry, foil caption first.

    Raises `DataError` when the file as a whole cannot be used; a bad entry gives `BadRecord`s.
    """
    path = Path(source.data)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a JSON list of nocaps-FOIL entries")

    def parse(index: int, item: Any, where: str) -> list[Record]:
        entry = as_object(item)
        image = get_str(entry, "image_path")
        baseline = get_str(entry, "baseline").strip()
        foil = get_str(entry, "foil").strip()
        replacement = get_str_list(entry, "replacement")
        if len(replacement) != 2:
            raise RecordError(f"'replacement' must be [original, foil], got {replacement!r}")
        original_word, foil_word = (w.strip() for w in replacement)
        if not foil_word:
            raise RecordError("'replacement' has an empty foil word")
        references = tuple(get_str_list(entry, "references", required=False))
        domain = entry.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise RecordError(f"'domain' must be a string, got {domain!r}")
        baseline_sample = Sample(
            id=f"{index}/baseline",
            image=image_path(source.images, image, path.parent),
            caption=baseline,
            ground_truth=GroundTruth(aligned=True),
            group=domain,
            references=references,
            image_name=image,
            source=where,
        )
        foiled = foil_word != original_word
        foil_sample = replace(
            baseline_sample,
            id=f"{index}/foil",
            caption=foil,
            ground_truth=GroundTruth(aligned=not foiled, words=(foil_word,) if foiled else ()),
            meta={"replacement": [original_word, foil_word]},
        )
        return [foil_sample, baseline_sample]

    return dedupe_ids(
        parse_records(
            data,
            lambda i: f"{path.name}: entry {i}",
            lambda i: [f"{i}/foil", f"{i}/baseline"],
            parse,
        )
    )


NOCAPS_FOIL = register_benchmark(
    Benchmark(
        name="nocaps-foil",
        title="nocaps-FOIL",
        load=load_nocaps_foil,
        judge=judge_word,
        mode="most_negative",
        positive="aligned",
        group_by="domain",
        data_help="nocaps-val-foil.json (ALOHa); --images-root: the nocaps validation images",
        aliases=("nocaps", "nocaps_foil"),
    )
)
