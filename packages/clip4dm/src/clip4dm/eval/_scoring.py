"""Scoring batches of benchmark records into ``samples.jsonl`` rows, one failure per record.

The detection itself is `clip4dm.batch.BatchRunner`'s (the runner ``detect --pairs`` uses too);
the rows are `clip4dm.rows`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clip4dm.batch import BatchRunner, Item
from clip4dm.detector import CLIP4DM
from clip4dm.eval.config import EvalConfig, Method
from clip4dm.eval.errors import EvalError
from clip4dm.eval.nli import NLIScorer
from clip4dm.eval.samples import BadRecord, Benchmark, Judgement, Record, Sample
from clip4dm.results import Detection
from clip4dm.rows import is_error, sample_error_row, sample_row
from vl_core.distributed import Dist, device_for_rank
from vl_core.files import RowWriter, error_text

__all__ = ["Scorer"]


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
        self._runner = BatchRunner(self.detector)
        self.scored = 0
        self.errors = 0

    @property
    def uses_nli(self) -> bool:
        """Whether this benchmark's samples get an NLI score in this run."""
        return self.bench.nli and (self._nli is not None or self.config.nli_model is not None)

    def detector(self) -> CLIP4DM:
        """The detector, loaded at the first call. Raises `EvalError` when it cannot be loaded."""
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
        """The NLI scorer, loaded at the first call. Raises `EvalError` when it cannot be loaded
        (the message names the ``clip4dm[nli]`` extra when transformers is missing)."""
        if self._nli is None:
            assert self.config.nli_model is not None
            try:
                self._nli = NLIScorer(
                    self.config.nli_model,
                    device=device_for_rank(self.config.device, self.info),
                    batch_size=self.config.nli_batch_size,
                )
            except (OSError, ValueError, ImportError) as exc:  # incl. MissingExtraError
                raise EvalError(f"cannot load the NLI model: {exc}") from exc
        return self._nli

    def model_identity(self) -> dict[str, Any] | None:
        """The loaded model's name, family, dtype, device and shape (``None`` before loading)."""
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
        """Score ``batches`` into ``path`` (appended row by row), counting results and errors.

        Raises `EvalError` when a model cannot be loaded.
        """
        samples = [r for batch in batches for r in batch if isinstance(r, Sample)]
        if samples:  # load models before the progress bar starts, so it shows the scoring rate
            self.detector()
            if self.uses_nli and any(not s.ground_truth.aligned for s in samples):
                self.nli()
        desc = self.bench.name + (f" [rank {self.info.rank}]" if self.info.sharded else "")
        total = sum(len(batch) for batch in batches)
        with (
            RowWriter(path) as writer,
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
                    if is_error(row):
                        self.errors += 1
                    else:
                        self.scored += 1
                bar.update(len(batch))

    def _item(self, sample: Sample) -> Item:
        references = sample.references if self.config.use_references and sample.references else None
        return Item(sample.image, sample.caption, references)

    def score(self, batch: Sequence[Record]) -> list[dict[str, Any]]:
        """One row per record, in order; a failure costs only the record it belongs to."""
        rows: dict[str, dict[str, Any]] = {}
        samples: list[Sample] = []
        for record in batch:
            if isinstance(record, BadRecord):
                rows[record.id] = sample_error_row(record, record.error)
            else:
                samples.append(record)
        found = self._runner.score([self._item(sample) for sample in samples])
        judged: list[tuple[Sample, Detection, Judgement]] = []
        for sample, detection in zip(samples, found, strict=True):
            if isinstance(detection, str):
                rows[sample.id] = sample_error_row(sample, detection)
                continue
            assert isinstance(detection, Detection)
            try:
                judged.append((sample, detection, self.bench.judge(sample, detection)))
            except Exception as exc:
                rows[sample.id] = sample_error_row(sample, f"cannot judge the detection: {exc}")
        nli_scores = self._nli_scores(judged)
        for sample, detection, judgement in judged:
            nli = nli_scores.get(sample.id)
            if isinstance(nli, str):
                rows[sample.id] = sample_error_row(sample, nli)
            else:
                rows[sample.id] = sample_row(sample, detection, judgement, nli)
        return [rows[record.id] for record in batch]

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
