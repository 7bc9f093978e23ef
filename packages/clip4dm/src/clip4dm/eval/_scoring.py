"""Scoring batches of benchmark records into ``samples.jsonl`` rows, one failure per record."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from clip4dm.detector import CLIP4DM
from clip4dm.eval.config import EvalConfig, Method
from clip4dm.eval.distributed import Dist, device_for_rank
from clip4dm.eval.errors import EvalError
from clip4dm.eval.nli import NLIScorer
from clip4dm.eval.samples import BadRecord, Benchmark, Judgement, Record, Sample
from clip4dm.jsonl import RowWriter, error_text
from clip4dm.results import Detection
from vl_core.images import load_image

__all__ = ["Scorer"]


def _error_row(record: Record, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": record.id, "record": record.source}
    if isinstance(record, Sample):
        row["image"] = record.image_name
        row["caption"] = record.caption
    row["error"] = error
    return row


def _result_row(
    sample: Sample, detection: Detection, judgement: Judgement, nli_score: float | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": sample.id,
        "image": sample.image_name,
        "caption": sample.caption,
        "ground_truth": sample.ground_truth.to_dict(),
        "prediction": judgement.prediction,
        "correct": judgement.correct,
    }
    if sample.group is not None:
        row["group"] = sample.group
    if sample.score is not None:
        row["gt_score"] = sample.score
    if judgement.tp is not None:
        row.update(tp=judgement.tp, fp=judgement.fp, fn=judgement.fn)
    if nli_score is not None:
        row["nli_score"] = nli_score
    detection_dict = detection.to_dict()
    detection_dict.pop("caption", None)
    row.update(detection_dict)
    if sample.meta:
        row["meta"] = dict(sample.meta)
    return row


class Scorer:
    """Scores batches of records into rows; loads the model (and NLI model) at first need."""

    def __init__(
        self,
        bench: Benchmark,
        method: Method,
        config: EvalConfig,
        info: Dist,
        detector: CLIP4DM | None,
        nli: NLIScorer | None,
    ) -> None:
        self.bench = bench
        self.method = method
        self.config = config
        self.info = info
        self._detector = detector
        self._nli = nli
        self.scored = 0
        self.errors = 0

    @property
    def uses_nli(self) -> bool:
        return self.bench.nli and (self._nli is not None or self.config.nli_model is not None)

    def detector(self) -> CLIP4DM:
        if self._detector is None:
            try:
                self._detector = CLIP4DM(
                    self.config.model,
                    mode=self.method.mode,
                    epsilon=self.method.epsilon,
                    layers=self.method.layers,
                    template=self.method.template,
                    device=device_for_rank(self.config.device, self.info),
                    dtype=self.config.dtype,
                )
            except (OSError, ValueError, TypeError) as exc:  # incl. ModelNotAvailableError
                raise EvalError(str(exc)) from exc
        return self._detector

    def nli(self) -> NLIScorer:
        if self._nli is None:
            assert self.config.nli_model is not None
            try:
                self._nli = NLIScorer(
                    self.config.nli_model,
                    device=device_for_rank(self.config.device, self.info),
                    batch_size=self.config.nli_batch_size,
                )
            except (OSError, ValueError, ImportError) as exc:
                raise EvalError(f"cannot load the NLI model: {exc}") from exc
        return self._nli

    def model_identity(self) -> dict[str, Any] | None:
        if self._detector is None:
            return None
        backbone = self._detector.backbone
        identity: dict[str, Any] = {
            "name": self.config.model,
            "backbone": backbone.name,
            "family": backbone.family,
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "device": str(backbone.device),
            "text_layers": backbone.num_text_layers,
            "context_length": backbone.context_length,
        }
        if self._nli is not None:
            identity["nli_model"] = self._nli.name
        return identity

    def run(self, batches: Sequence[Sequence[Record]], path: Path, progress: bool) -> None:
        samples = [r for batch in batches for r in batch if isinstance(r, Sample)]
        if samples:  # load models before the progress bar starts, so it shows the scoring rate
            self.detector()
            if self.uses_nli and any(not s.ground_truth.aligned for s in samples):
                self.nli()
        writer = RowWriter(path)
        desc = self.bench.name + (f" [rank {self.info.rank}]" if self.info.sharded else "")
        total = sum(len(batch) for batch in batches)
        with (
            contextlib.closing(writer),
            tqdm(
                total=total,
                desc=desc,
                unit="sample",
                disable=not progress,
                position=self.info.rank if self.info.sharded else None,
            ) as bar,
        ):
            for batch in batches:
                for row in self.score(batch):
                    writer.write(row)
                    if "error" in row:
                        self.errors += 1
                    else:
                        self.scored += 1
                bar.update(len(batch))

    def score(self, batch: Sequence[Record]) -> list[dict[str, Any]]:
        """One row per record, in order; a failure costs only the record it belongs to."""
        rows: dict[str, dict[str, Any]] = {}
        ready: list[tuple[Sample, Image.Image]] = []
        cache: dict[str, Image.Image] = {}  # pairs sharing an image file share one image
        for record in batch:
            if isinstance(record, BadRecord):
                rows[record.id] = _error_row(record, record.error)
                continue
            try:
                ready.append((record, self._image(record, cache)))
            except Exception as exc:  # unreadable image, or a dataset that fails to decode it
                rows[record.id] = _error_row(record, error_text(exc))
        judged: list[tuple[Sample, Detection, Judgement]] = []
        for (sample, _), detection in zip(ready, self._detect(ready), strict=True):
            if isinstance(detection, str):
                rows[sample.id] = _error_row(sample, detection)
                continue
            try:
                judged.append(
                    (sample, detection, self.bench.judge(sample, detection, self.method.template))
                )
            except Exception as exc:
                rows[sample.id] = _error_row(sample, f"cannot judge the detection: {exc}")
        nli_scores = self._nli_scores(judged)
        for sample, detection, judgement in judged:
            nli = nli_scores.get(sample.id)
            if isinstance(nli, str):
                rows[sample.id] = _error_row(sample, nli)
            else:
                rows[sample.id] = _result_row(sample, detection, judgement, nli)
        return [rows[record.id] for record in batch]

    @staticmethod
    def _image(sample: Sample, cache: dict[str, Image.Image]) -> Image.Image:
        source = sample.image
        if callable(source):
            return load_image(source())
        key = os.fspath(source)
        if key not in cache:
            cache[key] = load_image(key)
        return cache[key]

    def _detect(self, ready: Sequence[tuple[Sample, Image.Image]]) -> list[Detection | str]:
        """Detections (or error texts); samples with references get RefCLIPScore too."""
        if not ready:
            return []
        detector = self.detector()
        out: list[Detection | str] = ["" for _ in ready]
        with_refs = [self.config.use_references and bool(s.references) for s, _ in ready]
        for refs in (False, True):
            indices = [i for i, flag in enumerate(with_refs) if flag is refs]
            if not indices:
                continue
            images = [ready[i][1] for i in indices]
            texts = [ready[i][0].caption for i in indices]
            references = [list(ready[i][0].references) for i in indices] if refs else None
            try:
                found = detector.detect_batch(
                    images, texts, batch_size=len(indices), references=references
                )
                for i, detection in zip(indices, found, strict=True):
                    out[i] = detection
            except Exception:  # isolate the failing sample(s); the others still get their rows
                for position, i in enumerate(indices):
                    try:
                        out[i] = detector.detect(
                            images[position],
                            texts[position],
                            references=references[position] if references else None,
                        )
                    except Exception as exc:
                        out[i] = error_text(exc)
        return out

    def _nli_scores(
        self, judged: Sequence[tuple[Sample, Detection, Judgement]]
    ) -> dict[str, float | str]:
        """NLI score per sample id (aligned samples have none); error texts where it failed."""
        if not self.uses_nli:
            return {}
        todo = [(s, j) for s, _, j in judged if not s.ground_truth.aligned]
        if not todo:
            return {}
        scorer = self.nli()
        premises = [s.ground_truth.text or "" for s, _ in todo]
        hypotheses = [str(j.prediction or "") for _, j in todo]
        out: dict[str, float | str] = {}
        try:
            for (sample, _), value in zip(todo, scorer.score(premises, hypotheses), strict=True):
                out[sample.id] = value
        except Exception:
            for (sample, _), premise, hypothesis in zip(todo, premises, hypotheses, strict=True):
                try:
                    out[sample.id] = scorer.score([premise], [hypothesis])[0]
                except Exception as exc:
                    out[sample.id] = f"NLI scoring failed: {error_text(exc)}"
        return out
