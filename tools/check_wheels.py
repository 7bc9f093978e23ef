"""Check installed wheels: each package imports from site-packages, has a version and py.typed."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = {"vl_core": "vl-core", "clip4dm": "clip4dm", "egtr": "egtr"}


def main() -> int:
    failures = []
    for module_name, dist in PACKAGES.items():
        module = importlib.import_module(module_name)
        location = Path(module.__file__ or "").parent
        if "site-packages" not in location.parts:
            failures.append(f"{module_name} imported from {location}, not from an installed wheel")
        if module.__version__ != metadata.version(dist):
            failures.append(
                f"{module_name}.__version__ {module.__version__} != {metadata.version(dist)}"
            )
        if not (location / "py.typed").is_file():
            failures.append(f"{module_name}: py.typed missing from the wheel")
        print(f"{dist} {module.__version__} OK ({location})")
    for message in failures:
        print("FAIL:", message, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
