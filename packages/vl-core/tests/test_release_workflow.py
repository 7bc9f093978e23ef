"""The release workflow (.github/workflows/release.yml): which tags release what, the version
check against the built files, the wheel check it runs, and trusted publishing to PyPI."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
PACKAGES = {"vl-core": "vl_core", "clip4dm": "clip4dm", "egtr": "egtr"}


def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def selection_script() -> str:
    """The inline Python of the step that picks the tagged package's files."""
    (step,) = [s for s in workflow()["jobs"]["build"]["steps"] if "<<'PY'" in s.get("run", "")]
    text: str = step["run"]
    return text.split("<<'PY'\n", 1)[1].rsplit("\nPY", 1)[0]


def triggered(tag: str) -> bool:
    """Whether a pushed tag matches one of the workflow's tag patterns (GitHub's ``*`` and
    ``[0-9]`` mean what they mean to fnmatch for names without ``/``)."""
    return any(fnmatch.fnmatchcase(tag, p) for p in workflow()["on"]["push"]["tags"])


def test_tags_that_release() -> None:
    for tag in ("vl-core-v0.1.0", "clip4dm-v0.2.0", "egtr-v1.0.0rc1", "v0.1.0"):
        assert triggered(tag), tag
    for tag in ("release-1", "vnext", "clip4dm-0.1.0"):
        assert not triggered(tag), tag


def test_versions_come_from_one_place_each() -> None:
    versions = set()
    for name, module in PACKAGES.items():
        text = (ROOT / "packages" / name / "pyproject.toml").read_text()
        assert f'\nname = "{name}"\n' in text
        assert '\ndynamic = ["version"]\n' in text
        assert re.search(r"^version\s*=", text, re.MULTILINE) is None
        path = f"src/{module}/__init__.py"
        assert f'[tool.hatch.version]\npath = "{path}"\n' in text
        lines = (ROOT / "packages" / name / path).read_text().splitlines()
        (line,) = [x for x in lines if x.startswith("__version__ = ")]
        versions.add(line)
    assert len(versions) == 1  # a `vX.Y.Z` tag releases all three at one version


def test_build_runs_the_wheel_check_and_publish_uses_trusted_publishing() -> None:
    jobs = workflow()["jobs"]
    runs = [step.get("run", "") for step in jobs["build"]["steps"]]
    assert "nox -s build" in runs
    publish = jobs["publish"]
    assert publish["needs"] == "build"
    assert publish["environment"]["name"] == "pypi"
    assert publish["permissions"] == {"id-token": "write"}
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses)
    assert workflow()["permissions"] == {"contents": "read"}
    for step in publish["steps"]:  # no stored token: trusted publishing only
        assert "password" not in step.get("with", {})


def fake_dist(root: Path, versions: dict[str, str]) -> Path:
    dist = root / "dist"
    dist.mkdir()
    for name, version in versions.items():
        stem = PACKAGES[name]
        (dist / f"{stem}-{version}-py3-none-any.whl").write_bytes(b"w")
        (dist / f"{stem}-{version}.tar.gz").write_bytes(b"s")
    return dist


def select(tag: str, dist: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", selection_script(), tag, str(dist), str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("clip4dm-v0.2.0", ["clip4dm-0.2.0-py3-none-any.whl", "clip4dm-0.2.0.tar.gz"]),
        ("vl-core-v0.2.0", ["vl_core-0.2.0-py3-none-any.whl", "vl_core-0.2.0.tar.gz"]),
        (
            "v0.2.0",
            sorted(
                f"{s}-0.2.0{e}" for s in PACKAGES.values() for e in (".tar.gz", "-py3-none-any.whl")
            ),
        ),
    ],
)
def test_selection_keeps_the_tagged_packages(tmp_path: Path, tag: str, expected: list[str]) -> None:
    dist = fake_dist(tmp_path, dict.fromkeys(PACKAGES, "0.2.0"))
    done = select(tag, dist, tmp_path / "release")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == expected


def test_selection_refuses_a_version_other_than_the_tag(tmp_path: Path) -> None:
    dist = fake_dist(tmp_path, {"vl-core": "0.2.0", "clip4dm": "0.1.0", "egtr": "0.2.0"})
    done = select("clip4dm-v0.2.0", dist, tmp_path / "release")
    assert done.returncode == 1
    assert (
        "clip4dm-0.1.0-py3-none-any.whl is version 0.1.0 but the tag clip4dm-v0.2.0" in done.stderr
    )
    assert "packages/clip4dm/src/clip4dm/__init__.py" in done.stderr
    done = select("v0.2.0", dist, tmp_path / "all")
    assert done.returncode == 1


def test_selection_refuses_a_malformed_tag(tmp_path: Path) -> None:
    dist = fake_dist(tmp_path, dict.fromkeys(PACKAGES, "0.2.0"))
    done = select("v-next", dist, tmp_path / "release")
    assert done.returncode == 1
    assert "neither PACKAGE-vX.Y.Z nor vX.Y.Z" in done.stderr
