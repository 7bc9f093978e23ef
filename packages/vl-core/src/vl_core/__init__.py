"""vl-core: the shared core of clip4dm and egtr.

Backbone loading, attention capture inside autograd, gradients, images and safe checkpoints.
"""

from __future__ import annotations

from vl_core._env import environment_report

__version__ = "0.1.0"

__all__ = ["__version__", "environment_report"]
