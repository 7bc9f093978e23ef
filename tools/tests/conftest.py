"""Tests of the developer tools: ``tools`` is imported from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``import tools.world`` / ``tools.train_clip``
    sys.path.insert(0, str(ROOT))
