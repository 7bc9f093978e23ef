"""NLI score of SeeTRUE-Feedback: does the ground-truth description entail the predicted phrases?

An MNLI classifier (default ``facebook/bart-large-mnli``) reads premise = the description and
hypothesis = the predicted phrases; the neutral logit is dropped and the score is the entailment
probability of a softmax over [contradiction, entailment]. An empty prediction scores 0. Both
texts are lower-cased, as in the reference. Needs the ``clip4dm[nli]`` extra (transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vl_core.cli import require_extra
from vl_core.hub import ModelNotAvailableError, hub_errors, looks_like_path

if TYPE_CHECKING:
    from vl_core.devices import DeviceLike

__all__ = ["DEFAULT_NLI_MODEL", "NLIScorer"]

DEFAULT_NLI_MODEL = "facebook/bart-large-mnli"


def _label_index(label2id: dict[str, int], name: str, default: int) -> int:
    for label, index in label2id.items():
        if label.lower() == name:
            return int(index)
    return default


class NLIScorer:
    """Entailment probability of hypotheses given premises, with an MNLI sequence classifier.

    Raises `vl_core.cli.MissingExtraError` (an ``ImportError`` naming ``clip4dm[nli]``) without
    transformers, ``ValueError`` for a ``batch_size`` below 1, and
    `vl_core.hub.ModelNotAvailableError` (an ``OSError``) when the model cannot be had here.
    """

    def __init__(
        self,
        model: str = DEFAULT_NLI_MODEL,
        *,
        device: DeviceLike = "auto",
        batch_size: int = 16,
        lowercase: bool = True,
    ) -> None:
        transformers = require_extra(
            "transformers", package="clip4dm", extra="nli", feature="the NLI score"
        )
        from vl_core.devices import resolve_device

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = model
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.lowercase = lowercase
        hint = "Pass --nli-model with a local directory holding an MNLI classifier."
        if looks_like_path(model) and not Path(model).expanduser().is_dir():
            raise ModelNotAvailableError(model, "no such directory", hint)
        with hub_errors(model, hint):
            self.tokenizer: Any = transformers.AutoTokenizer.from_pretrained(model)
            classifier = transformers.AutoModelForSequenceClassification
            self.model: Any = classifier.from_pretrained(model)
        self.model.to(self.device).eval()
        label2id = {str(k): int(v) for k, v in (self.model.config.label2id or {}).items()}
        # facebook/bart-large-mnli orders its labels contradiction, neutral, entailment
        self.contradiction = _label_index(label2id, "contradiction", 0)
        self.entailment = _label_index(label2id, "entailment", 2)

    def score(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        """One entailment probability per pair; 0.0 where the hypothesis is empty.

        Raises ``ValueError`` when there are not as many premises as hypotheses.
        """
        import torch

        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        scores = [0.0] * len(premises)
        todo = [i for i, h in enumerate(hypotheses) if h.strip()]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            first = [self._text(premises[i]) for i in chunk]
            second = [self._text(hypotheses[i]) for i in chunk]
            encoded = self.tokenizer(
                first, second, padding=True, truncation="only_first", return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                logits = self.model(**encoded).logits.float()
            pair = logits[:, [self.contradiction, self.entailment]]
            probabilities = pair.softmax(dim=-1)[:, 1].cpu().tolist()
            for i, p in zip(chunk, probabilities, strict=True):
                scores[i] = float(p)
        return scores

    def _text(self, text: str) -> str:
        text = text.strip()
        return text.lower() if self.lowercase else text
