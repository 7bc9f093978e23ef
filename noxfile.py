"""Developer sessions for the workspace: tests, lowest, gpu, slow, typecheck, lint, build.

All sessions except ``build`` share ONE virtual environment (``.nox/_shared``) so torch (5 GB)
is installed once, not once per session. It is refreshed only when a ``pyproject.toml`` or the
pinned requirements below change. pip (not uv) is used on purpose: only pip reads this machine's
configuration that serves torch 2.14.1 / torchvision 0.29.1 from local disk.

``lowest`` has its own environment (``.nox/lowest``): the same test suite with every direct
dependency at the floor its ``pyproject.toml`` declares.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_external_run = False

ROOT = Path(__file__).resolve().parent
SHARED = ROOT / ".nox" / "_shared"
BIN = SHARED / ("Scripts" if os.name == "nt" else "bin")
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
DEV = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "mypy>=1.10",
    "ruff>=0.6",
    "build>=1.2",
    "types-tqdm",
    "types-PyYAML",
    "PyYAML>=6",
    "scikit-learn>=1.3",  # cross-check of the AP implementation in tests
]
MEMBERS = {
    "vl-core": "packages/vl-core[openclip,timm]",
    "clip4dm": "packages/clip4dm[nli,viz,torchmetrics,parquet]",
    "egtr": "packages/egtr[viz,eval]",
}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _stamp() -> str:
    digest = hashlib.sha256()
    for path in [*sorted(ROOT.glob("packages/*/pyproject.toml")), ROOT / "pyproject.toml"]:
        digest.update(path.read_bytes())
    digest.update(repr((TORCH, DEV, MEMBERS, sys.version_info[:2])).encode())
    return digest.hexdigest()


def shared_env(session: nox.Session) -> Path:
    """Create or refresh the shared environment and return its ``bin`` directory."""
    stamp_file = SHARED / ".stamp"
    stamp = _stamp()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return BIN
    if not (BIN / "python").exists():
        session.run(sys.executable, "-m", "venv", str(SHARED), external=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet"]
    # torch first, pinned, so nothing later can make pip resolve a newer (multi-GB) build.
    session.run(*pip, *TORCH, external=True)
    editable: list[str] = []
    for spec in MEMBERS.values():
        editable += ["-e", spec]
    session.run(*pip, *TORCH, *editable, *DEV, external=True)
    stamp_file.write_text(stamp)
    return BIN


def _run(session: nox.Session, tool: str, *args: str) -> None:
    bin_dir = shared_env(session)
    session.run(str(bin_dir / tool), *args, external=True, env=ENV)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """CPU test suite of all three packages and tools/ (excludes `gpu` and `slow`)."""
    _run(session, "pytest", "-m", "not gpu and not slow", *session.posargs)


LOWEST = ROOT / ".nox" / "lowest"
LOWEST_BIN = LOWEST / ("Scripts" if os.name == "nt" else "bin")
PINNED = {"torch", "torchvision"}  # the pinned build (TORCH) is used, whatever the floors say
# What `lowest` runs by default (CI time): every package's loading, CLI and packaging tests and
# the tests of what touches a third-party API (images, tokenizers, hub, pipeline, metrics, drawings,
# COCO, YAML, matching). Left out: tests of torch-only code (the two-process runs, the evaluation
# protocols, the training loop), which the floors cannot change.
_CLIP4DM = (
    "alignment cli detector eval_nli metrics model_cards package shipped_clip tables visualize"
)
_EGTR = (
    "cli convert data_transforms deformable eval_detection hub model_cards modeling package "
    "pipeline predictor scene_graph shipped_egtr train_config train_matcher"
)
LOWEST_TESTS = [
    "packages/vl-core/tests",
    *(f"packages/clip4dm/tests/test_{name}.py" for name in _CLIP4DM.split()),
    *(f"packages/egtr/tests/test_{name}.py" for name in _EGTR.split()),
]


def floors() -> dict[str, str]:
    """``{name: version}``: the declared floor (``name>=version``) of every direct dependency of
    the members, with the extras MEMBERS installs; torch, torchvision and the members themselves
    are left out.

    Raises ``ValueError`` for a dependency without a ``>=`` floor, and for one whose floors
    disagree between packages (only one of them could be tested).
    """
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    projects: dict[str, list[str]] = {}
    for spec in MEMBERS.values():
        match = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", spec)
        assert match is not None, spec
        data = tomllib.loads((ROOT / match[1] / "pyproject.toml").read_text())["project"]
        extras = [e.strip() for e in (match[2] or "").split(",") if e.strip()]
        wanted = list(data["dependencies"])
        for extra in extras:
            wanted += data["optional-dependencies"][extra]
        projects[canonicalize_name(data["name"])] = wanted
    found: dict[str, tuple[str, str]] = {}
    for project, wanted in projects.items():
        for text in wanted:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if name in projects or name in PINNED or (req.marker and not req.marker.evaluate()):
                continue
            lows = [s.version for s in req.specifier if s.operator == ">="]
            if len(lows) != 1:
                raise ValueError(f"{project}: {text!r} needs one floor (name>=version)")
            if name in found and Version(found[name][0]) != Version(lows[0]):
                other = found[name]
                raise ValueError(
                    f"floors disagree: {name}>={lows[0]} ({project}) and {name}>={other[0]} "
                    f"({other[1]}): declare the same floor in both"
                )
            found[name] = (lows[0], project)
    return {name: version for name, (version, _) in sorted(found.items())}


@nox.session(venv_backend="none")
def lowest(session: nox.Session) -> None:
    """CPU tests with every direct dependency at its declared floor (in .nox/lowest).

    torch and torchvision stay on the pinned build (TORCH); the floors are listed in the log.
    Runs LOWEST_TESTS; arguments replace them, e.g. the whole suite:
    `nox -s lowest -- packages/vl-core/tests packages/clip4dm/tests packages/egtr/tests tools/tests`.
    """
    try:
        pins = floors()
    except ValueError as exc:
        session.error(str(exc))
    stamp_file = LOWEST / ".stamp"
    stamp = hashlib.sha256(repr((_stamp(), pins)).encode()).hexdigest()
    if not (stamp_file.exists() and stamp_file.read_text() == stamp):
        session.run(sys.executable, "-m", "venv", "--clear", str(LOWEST), external=True)
        constraints = LOWEST / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        pip = [str(LOWEST_BIN / "python"), "-m", "pip", "install", "--quiet"]
        session.run(*pip, *TORCH, external=True)  # first, so pip never resolves another torch
        editable: list[str] = []
        for spec in MEMBERS.values():
            editable += ["-e", spec]
        session.run(*pip, "-c", str(constraints), *TORCH, *editable, *DEV, external=True)
        stamp_file.write_text(stamp)
    session.log("floors: " + ", ".join(f"{name}=={version}" for name, version in pins.items()))
    chosen = session.posargs or LOWEST_TESTS
    session.run(
        str(LOWEST_BIN / "pytest"), "-m", "not gpu and not slow", *chosen, external=True, env=ENV
    )


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """Long end-to-end tests (shipped models, training runs)."""
    _run(session, "pytest", "-m", "slow and not gpu", *session.posargs)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """Tests marked `gpu`; skipped with a reason when CUDA is absent."""
    bin_dir = shared_env(session)
    probe = session.run(
        str(bin_dir / "python"),
        "-c",
        "import torch; print(torch.cuda.is_available())",
        external=True,
        silent=True,
    )
    if not probe or probe.strip().splitlines()[-1] != "True":
        session.skip("CUDA is not available on this machine: the `gpu` tests need an NVIDIA GPU.")
    _run(session, "pytest", "-m", "gpu", *session.posargs)


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the three src/ trees, tools/ (with its tests) and the typing/ programs."""
    _run(session, "mypy", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    _run(session, "ruff", "check", ".")
    _run(session, "ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks in tools/bench/ (pass a script name to run just one)."""
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "tools" / "bench").glob("*.py"))
    for script in scripts:
        _run(session, "python", script)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """Offline demo: clip4dm and egtr on the shipped sample images with the shipped shapes-world
    models (tools/demo.py); writes JSON, HTML and PNG files to demo-output/ and prints the path."""
    _run(session, "python", str(ROOT / "tools" / "demo.py"), *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """Build wheels + sdists, install the wheels into a fresh environment, import and run CLIs."""
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    for old in dist.iterdir():
        old.unlink()
    session.install("build>=1.2")
    for name in MEMBERS:
        session.run("python", "-m", "build", "--outdir", str(dist), f"packages/{name}")
    check = Path(session.create_tmp()) / "wheel-check"
    session.run(sys.executable, "-m", "venv", "--clear", str(check), external=True)
    py = str(check / "bin" / "python")
    session.run(py, "-m", "pip", "install", "--quiet", *TORCH, external=True)
    wheels = sorted(str(w) for w in dist.glob("*.whl"))
    session.run(
        py,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--find-links",
        str(dist),
        *TORCH,
        *wheels,
        external=True,
    )
    session.run(py, str(ROOT / "tools" / "check_wheels.py"), external=True, env=ENV)
    for cli in ("clip4dm", "egtr"):
        session.run(str(check / "bin" / cli), "--help", external=True, env=ENV)
