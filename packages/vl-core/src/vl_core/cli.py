"""The command-line dialect shared by ``clip4dm`` and ``egtr`` (and the developer tools).

- A user mistake prints one line, ``PROG: error: <what> (<where>): <how to fix>``, and exits 2;
  a traceback only with ``--debug`` or for a real bug.
- Exit codes: `EXIT_OK` (0) all done; `EXIT_PARTIAL` (1) finished with some error rows;
  `EXIT_USAGE` (2) usage error; `EXIT_INTERRUPTED` (130) Ctrl-C, after printing the command that
  resumes the run.
- ``--quiet`` silences progress bars and third-party chatter (warnings, "Loading weights" bars);
  results still go to stdout or ``--out``.
- Integers and probabilities are validated by argparse types, so ``--batch-size 0`` is a usage
  error, not a silent single batch.

This module imports neither torch nor transformers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import logging
import math
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, NoReturn

__all__ = [
    "DTYPE_CHOICES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "MissingExtraError",
    "Parser",
    "UsageError",
    "add_quiet_option",
    "deprecated_alias",
    "device_name",
    "exit_status",
    "finite_float",
    "non_negative_int",
    "positive_int",
    "probability",
    "quiet_libraries",
    "quiet_transformers",
    "report_error_rows",
    "require_extra",
    "run_command",
]

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DTYPE_CHOICES = ("auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16")
"""``--dtype`` choices: the names `vl_core.devices.resolve_dtype` accepts (a torch-free copy)."""

_DEVICE = re.compile(r"auto|cpu|mps|(?:cuda|xpu)(?::\d+)?")


class UsageError(Exception):
    """A mistake the user can fix: reported in one line, exit status 2.

    ``UsageError(what, where=None, fix=None)`` formats as ``what (where): fix``.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        text = what
        if where:
            text += f" ({where})"
        if fix:
            text += f": {fix}"
        super().__init__(text)


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``PROG: error: message``.

    Sub-parsers created with ``add_subparsers`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: message`` and a pointer to ``--help``; exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument types -------------------------------------------------------------------------------


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1. Raises ``argparse.ArgumentTypeError`` otherwise."""
    number = _integer(text, "a positive integer")
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return number


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0. Raises ``argparse.ArgumentTypeError`` otherwise."""
    number = _integer(text, "an integer >= 0")
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return number


def finite_float(text: str) -> float:
    """argparse type: a finite number (no ``nan``/``inf``). Raises ``ArgumentTypeError``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (also ``xpu[:N]``).

    Raises ``argparse.ArgumentTypeError`` otherwise (whether the device exists is checked when
    the model is placed on it).
    """
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, mps, cuda or cuda:N, got {text!r}")
    return text


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]. Raises ``argparse.ArgumentTypeError`` otherwise."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


# -- options --------------------------------------------------------------------------------------


def add_quiet_option(
    parser: argparse.ArgumentParser | Any, *, no_progress_alias: bool = False
) -> None:
    """Add ``--quiet`` (dest ``quiet``): no progress bars, no third-party warnings or bars.

    ``no_progress_alias`` keeps a documented ``--no-progress`` spelling as a deprecated alias.
    """
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no third-party warnings (results are still printed)",
    )
    if no_progress_alias:
        deprecated_alias(parser, "--no-progress", "--quiet", dest="quiet", nargs=0, const=True)


def deprecated_alias(
    parser: argparse.ArgumentParser | Any,
    old: str,
    new: str,
    *,
    dest: str,
    nargs: int | str | None = None,
    const: Any = None,
    **kwargs: Any,
) -> None:
    """Accept ``old`` as a deprecated spelling of ``new`` (hidden from ``--help``): it sets
    ``dest`` like ``new`` does and prints one deprecation line on stderr."""

    class _Alias(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            print(
                f"{parser.prog}: warning: {old} is deprecated and will be removed in the next "
                f"release; use {new}",
                file=sys.stderr,
            )
            setattr(namespace, self.dest, const if self.nargs == 0 else values)

    parser.add_argument(
        old, dest=dest, action=_Alias, nargs=nargs, help=argparse.SUPPRESS, **kwargs
    )


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Inside the block, silence Python warnings and the logging and progress bars of
    transformers and huggingface_hub (when they are installed). Nothing changes when
    ``enabled`` is false."""
    if not enabled:
        yield
        return
    restore: list[Callable[[], None]] = []
    for name in ("transformers", "huggingface_hub", "timm", "open_clip"):
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        restore.append(functools.partial(logger.setLevel, level))
    # import the libraries' switches now (not torch), so that a model loaded inside the block is
    # silenced too, not only libraries that happened to be imported already
    if importlib.util.find_spec("transformers") is not None:
        _silence_transformers(restore)
    hub = _optional_module("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "disable_progress_bars"):
        hub.disable_progress_bars()
        restore.append(hub.enable_progress_bars)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for undo in reversed(restore):
            undo()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside the block, hide transformers' log messages below errors (its load report) and its
    progress bars ("Loading weights"), for code that reports loading problems itself; restored
    afterwards. Yields nothing; raises ``ImportError`` when transformers is not installed."""
    restore: list[Callable[[], None]] = []
    _silence_transformers(restore)
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _silence_transformers(restore: list[Callable[[], None]]) -> None:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    restore.append(lambda: hf_logging.set_verbosity(verbosity))
    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        restore.append(hf_logging.enable_progress_bar)


def require_extra(module: str, *, package: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` and return it, or raise `MissingExtraError` naming the
    extra: ``"<module> is not installed (<feature>): pip install '<package>[<extra>]'"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module.split('.')[0]} is not installed ({feature}): pip install '{package}[{extra}]'"
        ) from exc


# -- running a command ----------------------------------------------------------------------------


def exit_status(errors: int) -> int:
    """`EXIT_OK` when no row failed, `EXIT_PARTIAL` when ``errors`` rows are error rows."""
    return EXIT_PARTIAL if errors else EXIT_OK


def report_error_rows(prog: str, errors: int, what: str, where: str = "") -> int:
    """When ``errors`` rows are error rows, print ``PROG: <errors> <what><where>`` on stderr (e.g.
    ``what="pair(s) could not be scored"``, ``where`` the file and how to retry them).

    Returns `exit_status` of ``errors``; raises nothing.
    """
    if errors:
        print(f"{prog}: {errors} {what}{where}", file=sys.stderr)
    return exit_status(errors)


def run_command(
    prog: str,
    command: Callable[[], int],
    *,
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
    debug: bool = False,
    resumable: bool = True,
) -> int:
    """Run ``command()`` under the shared rules and return the exit status.

    `UsageError`, `MissingExtraError` and ``user_errors`` print ``PROG: error: message`` (exit 2;
    re-raised with ``debug``); Ctrl-C prints what was kept and the command that resumes (exit 130).
    """
    handled: tuple[type[BaseException], ...] = (UsageError, MissingExtraError, *user_errors)
    try:
        return int(command())
    except handled as exc:
        if debug:
            raise
        message = str(exc) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # a prog with its sub-command ("egtr train") is two words of the command line
        words = [*prog.split(), *(sys.argv[1:] if argv is None else argv)]
        if resumable:
            note = f"resume with: {shlex.join(words)}"
        else:
            note = f"run again with: {shlex.join(words)}"
        print(f"\n{prog}: interrupted; what was written so far is kept; {note}", file=sys.stderr)
        return EXIT_INTERRUPTED
