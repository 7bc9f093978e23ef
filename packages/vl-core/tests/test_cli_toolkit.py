"""The shared command-line dialect (vl_core.cli): one-line errors, exit codes, types, quiet."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import warnings

import pytest

from vl_core.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    MissingExtraError,
    Parser,
    UsageError,
    add_quiet_option,
    exit_status,
    finite_float,
    non_negative_int,
    positive_int,
    probability,
    quiet_libraries,
    require_extra,
    run_command,
)


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (positive_int, "3", 3),
        (non_negative_int, "0", 0),
        (finite_float, "-5e-5", -5e-5),
        (probability, "1", 1.0),
    ],
)
def test_types_accept(kind: object, text: str, value: float) -> None:
    assert kind(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (positive_int, "0"),
        (positive_int, "-1"),
        (positive_int, "2.5"),
        (non_negative_int, "-1"),
        (finite_float, "nan"),
        (finite_float, "inf"),
        (finite_float, "x"),
        (probability, "1.5"),
        (probability, "nan"),
    ],
)
def test_types_refuse(kind: object, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        kind(text)  # type: ignore[operator]


def test_parser_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = Parser(prog="tool")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run")
    run.add_argument("--batch-size", type=positive_int, default=1)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["run", "--batch-size", "0"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tool run: error: argument --batch-size: expected a positive integer")


def test_usage_error_format() -> None:
    error = UsageError("image not found", "pairs.jsonl line 3", "check the path")
    assert str(error) == "image not found (pairs.jsonl line 3): check the path"
    assert str(UsageError("bad")) == "bad"


def test_run_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("tool", lambda: EXIT_OK) == 0
    assert exit_status(0) == EXIT_OK
    assert exit_status(3) == EXIT_PARTIAL

    def mistake() -> int:
        raise UsageError("no such file", "x.png", "check the path")

    assert run_command("tool", mistake) == EXIT_USAGE
    assert capsys.readouterr().err == "tool: error: no such file (x.png): check the path\n"
    with pytest.raises(UsageError):
        run_command("tool", mistake, debug=True)

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_command("tool", interrupted, argv=["run", "--out", "a b.jsonl"]) == 130
    assert EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "interrupted" in err
    assert "resume with: tool run --out 'a b.jsonl'" in err

    def bug() -> int:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError):  # real bugs keep their traceback
        run_command("tool", bug)

    def declared() -> int:
        raise LookupError("bad key")

    assert run_command("tool", declared, user_errors=(LookupError,)) == EXIT_USAGE


def test_quiet_and_its_deprecated_alias(capsys: pytest.CaptureFixture[str]) -> None:
    parser = Parser(prog="tool")
    add_quiet_option(parser, no_progress_alias=True)
    assert parser.parse_args([]).quiet is False
    assert parser.parse_args(["--quiet"]).quiet is True
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["--no-progress"]).quiet is True
    assert "--no-progress is deprecated" in capsys.readouterr().err
    assert "--no-progress" not in parser.format_help()


def test_quiet_libraries_silences_and_restores() -> None:
    logger = logging.getLogger("transformers")
    before = logger.level
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            warnings.warn("noise", UserWarning, stacklevel=1)
            assert logger.level == logging.ERROR
        with quiet_libraries(enabled=False):
            warnings.warn("kept", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["kept"]
    assert logger.level == before


def test_require_extra_names_the_extra() -> None:
    assert require_extra("json", package="x", extra="y", feature="f").dumps([]) == "[]"
    with pytest.raises(
        MissingExtraError,
        match=r"no_such_mod is not installed \(PNG figures\): pip install 'clip4dm\[viz\]'",
    ):
        require_extra("no_such_mod.sub", package="clip4dm", extra="viz", feature="PNG figures")


def test_toolkit_does_not_import_torch() -> None:
    code = "import sys, vl_core.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
