"""Runtime environment report shared by the command-line tools (``info`` subcommands)."""

from __future__ import annotations

import platform
from importlib import metadata


def environment_report(packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of the given distributions, Python, and the torch device situation."""
    report: dict[str, str] = {"python": platform.python_version()}
    for name in packages:
        try:
            report[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            report[name] = "not installed"
    try:
        import torch

        report["cuda"] = torch.version.cuda or "none"
        report["cuda_available"] = str(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        report["cuda"] = "torch missing"
    return report
