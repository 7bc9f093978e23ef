"""The training metrics log: one JSON object per line (``metrics.jsonl``), TensorBoard optionally."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends records to ``path`` (JSON lines); mirrors numeric fields to TensorBoard if asked
    and ``tensorboard`` is installed. Only the main process should own one."""

    def __init__(self, path: str | os.PathLike[str], *, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning(
                    "train.tensorboard is on but tensorboard is not installed; writing %s only",
                    self.path,
                )
            else:
                self._writer = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (non-finite floats are written as ``null``)."""
        clean = {k: _json_value(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._writer is not None:
            step = int(record.get("step", 0))
            prefix = str(record.get("event", "train"))
            for key, value in record.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if numeric and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        """Close the log file (and the TensorBoard writer, when one is open)."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics log."""
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
