"""The ``clip4dm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from clip4dm import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from vl_core import environment_report

    print(
        json.dumps(
            environment_report(("clip4dm", "vl-core", "torch", "transformers", "open_clip_torch")),
            indent=2,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip4dm",
        description="Find the words of a caption that do not match the image (CLIP4DM, F-CLIPScore).",
    )
    parser.add_argument("--version", action="version", version=f"clip4dm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print package, torch and device versions (for bug reports)")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
