"""Developer sessions for the workspace: tests, gpu, slow, typecheck, lint, build.

All sessions except ``build`` share ONE virtual environment (``.nox/_shared``) so torch (5 GB)
is installed once, not once per session. It is refreshed only when a ``pyproject.toml`` or the
pinned requirements below change. pip (not uv) is used on purpose: only pip reads this machine's
configuration that serves torch 2.14.1 / torchvision 0.29.1 from local disk.
"""

from __future__ import annotations

import hashlib
import os
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
    "clip4dm": "packages/clip4dm[nli,viz,torchmetrics]",
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
