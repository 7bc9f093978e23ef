"""The clip4dm command line parses and reports."""

from __future__ import annotations

import json

import pytest

from clip4dm.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out


def test_info_reports_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clip4dm"] != "not installed"
    assert "torch" in report
