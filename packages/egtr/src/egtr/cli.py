"""The ``egtr`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from egtr import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from vl_core import environment_report

    print(
        json.dumps(
            environment_report(("egtr", "vl-core", "torch", "transformers", "timm")), indent=2
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egtr",
        description="Scene graphs (objects and relations) from images in one stage (EGTR).",
    )
    parser.add_argument("--version", action="version", version=f"egtr {__version__}")
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
