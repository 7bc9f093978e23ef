"""The surface both command lines promise (CONTRIBUTING.md, shared/specs/surface.md), as tables
of cases run against every command, with the shipped shapes-world models on the shipped samples:

- conventions: a usage error exits 2 with one line ``PROG CMD: error: ...`` and no traceback;
  Ctrl-C exits 130 and prints the command that resumes; ``--quiet`` silences progress bars and
  third-party chatter; bad numbers are refused;
- principles: a command never writes over one of its inputs or over a file it did not create
  (unless ``--overwrite``); arguments are validated before any file is touched; an interrupted run
  resumes to the same final result.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "shared" / "world" / "samples"
IMAGES = SAMPLES / "images"
CLIP = ROOT / "shared" / "models" / "clip-shapes"
EGTR = ROOT / "shared" / "models" / "egtr-shapes"
CONFIG = ROOT / "tools" / "configs" / "egtr_shapes_egtr.yaml"


def _main(tool: str) -> Callable[[Sequence[str]], int]:
    if tool == "clip4dm":
        from clip4dm.cli import main as clip_main

        return clip_main
    from egtr.cli import main as egtr_main

    return egtr_main


def run(tool: str, argv: Sequence[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a command in this process as a user would; returns (status, stdout, stderr)."""
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning shown earlier in the session shows again
        try:
            status = _main(tool)(list(argv))
        except SystemExit as exc:  # argparse
            status = int(exc.code or 0)
    out, err = capfd.readouterr()
    return status, out, err


def assert_one_line_error(tool: str, command: str, status: int, err: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"{tool} {command}: error: "), err
    assert "Traceback" not in err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@dataclass
class World:
    """A scratch copy of the inputs every case may use (so nothing in the repo is at risk)."""

    root: Path
    pairs: Path = field(init=False)
    image: Path = field(init=False)
    foil: Path = field(init=False)
    vg: Path = field(init=False)
    images: Path = field(init=False)

    def __post_init__(self) -> None:
        shutil.copytree(IMAGES, self.root / "images")
        self.images = self.root / "images"
        self.image = self.images / "test_000000.png"
        rows = [
            json.loads(line) for line in (SAMPLES / "pairs" / "test.jsonl").read_text().splitlines()
        ]
        self.pairs = self.root / "pairs.jsonl"
        self.pairs.write_text(
            "".join(
                json.dumps({**row, "image": str(self.images / Path(row["image"]).name)}) + "\n"
                for row in rows[:4]
            )
        )
        (self.root / "foil").mkdir()
        self.foil = self.root / "foil" / "test.json"
        shutil.copy(SAMPLES / "foil" / "test.json", self.foil)
        self.vg = self.root / "vg"
        shutil.copytree(SAMPLES / "vg", self.vg)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


CLIP_MODEL = ["--model", f"hf:{CLIP}", "--device", "cpu"]
EGTR_MODEL = ["--model", str(EGTR), "--device", "cpu"]


def _eval_clip(w: World, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "foil",
        "--data",
        str(w.foil),
        "--images-root",
        str(w.images),
        "--out",
        str(out),
        "--limit",
        "4",
        *CLIP_MODEL,
        *extra,
    ]


def _eval_egtr(w: World, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        *EGTR_MODEL,
        "--data",
        str(w.vg),
        "--images-root",
        str(w.images),
        "--split",
        "test",
        "--out",
        str(out),
        "--limit",
        "2",
        "--no-detection-ap",
        *extra,
    ]


# -- conventions ----------------------------------------------------------------------------------

USAGE_ERRORS: list[tuple[str, str, Callable[[World], list[str]]]] = [
    (
        "clip4dm",
        "detect",
        lambda w: ["detect", str(w.image), "a cat", "--batch-size", "0", *CLIP_MODEL],
    ),
    (
        "clip4dm",
        "detect",
        lambda w: [
            "detect",
            "--pairs",
            str(w.pairs),
            "--out",
            str(w.root / "r.jsonl"),
            "--epsilon",
            "nan",
            *CLIP_MODEL,
        ],
    ),
    ("clip4dm", "detect", lambda w: ["detect", str(w.root / "missing.png"), "a cat", *CLIP_MODEL]),
    ("clip4dm", "detect", lambda w: ["detect", str(w.image), "a cat", "--model", str(EGTR)]),
    (
        "clip4dm",
        "visualize",
        lambda w: ["visualize", str(w.image), "a cat", "--out", str(w.root / "v.txt"), *CLIP_MODEL],
    ),
    ("clip4dm", "eval", lambda w: _eval_clip(w, w.root / "e", "--batch-size", "0")),
    ("egtr", "predict", lambda w: ["predict", str(w.image), *EGTR_MODEL, "--batch-size", "0"]),
    ("egtr", "predict", lambda w: ["predict", str(w.image), *EGTR_MODEL, "--top-k", "-1"]),
    ("egtr", "predict", lambda w: ["predict", str(w.image), "--model", str(CLIP)]),
    ("egtr", "eval", lambda w: _eval_egtr(w, w.root / "e", "--batch-size", "0")),
    ("egtr", "info", lambda w: ["info", "--model", str(w.root / "nothing-here")]),
    (
        "egtr",
        "train",
        lambda w: [
            "train",
            "--config",
            str(CONFIG),
            "--data",
            str(SAMPLES / "vg"),
            "--init",
            str(EGTR),
            "--out",
            str(w.root / "t"),
            "--set",
            "model.overrides.num_querys=50",
        ],
    ),
    (
        "egtr",
        "convert",
        lambda w: [
            "convert",
            "--checkpoint",
            str(w.image),
            "--config",
            str(w.pairs),
            "--out",
            str(w.root / "c"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("tool", "command", "argv"),
    USAGE_ERRORS,
    ids=[f"{t}-{c}-{i}" for i, (t, c, _) in enumerate(USAGE_ERRORS)],
)
def test_usage_error_is_one_line_and_exit_2(
    world: World,
    capfd: pytest.CaptureFixture[str],
    tool: str,
    command: str,
    argv: Callable[[World], list[str]],
) -> None:
    before = snapshot(world.root)
    status, _, err = run(tool, argv(world), capfd)
    assert_one_line_error(tool, command, status, err)
    assert snapshot(world.root) == before  # validated before any file was touched


def _interrupt_images(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Ctrl-C at the ``after``-th image read (every command reads images through PIL)."""
    import PIL.Image

    original = PIL.Image.open
    calls = {"n": 0}

    def open_or_interrupt(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PIL.Image, "open", open_or_interrupt)


RESUMABLE: list[tuple[str, str, Callable[[World, Path], list[str]], str]] = [
    (
        "clip4dm",
        "detect",
        lambda w, o: [
            "detect",
            "--pairs",
            str(w.pairs),
            "--out",
            str(o / "r.jsonl"),
            "--batch-size",
            "1",
            "--mode",
            "most_negative",
            *CLIP_MODEL,
        ],
        "r.jsonl",
    ),
    (
        "clip4dm",
        "eval",
        lambda w, o: _eval_clip(w, o / "e", "--batch-size", "1"),
        "e/samples.jsonl",
    ),
    (
        "egtr",
        "predict",
        lambda w, o: [
            "predict",
            *[str(p) for p in sorted(w.images.glob("*.png"))[:3]],
            *EGTR_MODEL,
            "--out",
            str(o / "g.jsonl"),
        ],
        "g.jsonl",
    ),
    (
        "egtr",
        "eval",
        lambda w, o: _eval_egtr(w, o / "e", "--batch-size", "1"),
        "e/predictions.jsonl",
    ),
]


@pytest.mark.parametrize(
    ("tool", "command", "argv", "result"), RESUMABLE, ids=[f"{t}-{c}" for t, c, _, _ in RESUMABLE]
)
def test_ctrl_c_exits_130_with_the_resume_command_and_resumes_to_the_same_result(
    world: World,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tool: str,
    command: str,
    argv: Callable[[World, Path], list[str]],
    result: str,
) -> None:
    straight, broken = world.root / "straight", world.root / "broken"
    status, _, err = run(tool, [*argv(world, straight), "--quiet"], capfd)
    assert status == 0, err
    with monkeypatch.context() as patch:
        _interrupt_images(patch, after=1)
        status, _, err = run(tool, [*argv(world, broken), "--quiet"], capfd)
    assert status == 130, err
    assert "Traceback" not in err
    assert f"resume with: {tool} {command}" in err
    status, _, err = run(tool, [*argv(world, broken), "--quiet"], capfd)
    assert status == 0, err
    assert (broken / result).read_bytes() == (straight / result).read_bytes()


QUIET: list[tuple[str, Callable[[World], list[str]]]] = [
    (
        "clip4dm",
        lambda w: [
            "detect",
            "--pairs",
            str(w.pairs),
            "--out",
            str(w.root / "r.jsonl"),
            *CLIP_MODEL,
        ],
    ),
    ("clip4dm", lambda w: _eval_clip(w, w.root / "e")),
    ("egtr", lambda w: ["predict", str(w.image), *EGTR_MODEL, "--out", str(w.root / "g.jsonl")]),
    ("egtr", lambda w: _eval_egtr(w, w.root / "e")),
]


@pytest.mark.parametrize(
    ("tool", "argv"), QUIET, ids=[f"{t}-{i}" for i, (t, _) in enumerate(QUIET)]
)
def test_quiet_silences_progress_and_third_party_chatter(
    world: World, capfd: pytest.CaptureFixture[str], tool: str, argv: Callable[[World], list[str]]
) -> None:
    status, _, err = run(tool, [*argv(world), "--quiet"], capfd)
    assert status == 0, err
    assert err == ""


# -- principles: never over an input or a foreign file ----------------------------------------------

OVER_INPUT: list[tuple[str, str, Callable[[World], list[str]]]] = [
    (
        "clip4dm",
        "detect",
        lambda w: ["detect", "--pairs", str(w.pairs), "--out", str(w.pairs), *CLIP_MODEL],
    ),
    (
        "clip4dm",
        "visualize",
        lambda w: [
            "visualize",
            str(w.image),
            "a cat",
            "--out",
            str(w.image),
            "--overwrite",
            *CLIP_MODEL,
        ],
    ),
    ("clip4dm", "eval", lambda w: _eval_clip(w, w.foil)),
    (
        "egtr",
        "predict",
        lambda w: ["predict", str(w.image), *EGTR_MODEL, "--out", str(w.image), "--overwrite"],
    ),
    ("egtr", "eval", lambda w: _eval_egtr(w, w.vg / "test.json")),
    (
        "egtr",
        "convert",
        lambda w: [
            "convert",
            "--checkpoint",
            str(w.root / "c" / "x.ckpt"),
            "--config",
            str(w.root / "c" / "config.json"),
            "--out",
            str(w.root / "c"),
            "--overwrite",
        ],
    ),
    (
        "egtr",
        "train",
        lambda w: [
            "train",
            "--config",
            str(w.root / "t" / "config.yaml"),
            "--data",
            str(SAMPLES / "vg"),
            "--init",
            str(EGTR),
            "--out",
            str(w.root / "t"),
            "--overwrite",
        ],
    ),
]


def _inputs_for_convert_and_train(w: World) -> None:
    (w.root / "c").mkdir()
    (w.root / "c" / "x.ckpt").write_bytes(b"not a checkpoint")
    (w.root / "c" / "config.json").write_text('{"model_type": "deformable_detr"}')
    (w.root / "t").mkdir()
    shutil.copy(CONFIG, w.root / "t" / "config.yaml")


@pytest.mark.parametrize(
    ("tool", "command", "argv"),
    OVER_INPUT,
    ids=[f"{t}-{c}-{i}" for i, (t, c, _) in enumerate(OVER_INPUT)],
)
def test_never_writes_over_an_input(
    world: World,
    capfd: pytest.CaptureFixture[str],
    tool: str,
    command: str,
    argv: Callable[[World], list[str]],
) -> None:
    _inputs_for_convert_and_train(world)
    before = snapshot(world.root)
    status, _, err = run(tool, argv(world), capfd)
    assert_one_line_error(tool, command, status, err)
    assert snapshot(world.root) == before


FOREIGN: list[tuple[str, str, Callable[[World, Path], list[str]], str]] = [
    (
        "clip4dm",
        "detect",
        lambda w, f: [
            "detect",
            "--pairs",
            str(w.pairs),
            "--out",
            str(f / "notes.txt"),
            *CLIP_MODEL,
        ],
        "notes.txt",
    ),
    (
        "clip4dm",
        "visualize",
        lambda w, f: [
            "visualize",
            str(w.image),
            "a cat",
            "--out",
            str(f / "page.html"),
            *CLIP_MODEL,
        ],
        "page.html",
    ),
    ("clip4dm", "eval", lambda w, f: _eval_clip(w, f), "samples.jsonl"),
    (
        "egtr",
        "predict",
        lambda w, f: ["predict", str(w.image), *EGTR_MODEL, "--out", str(f / "notes.txt")],
        "notes.txt",
    ),
    ("egtr", "eval", lambda w, f: _eval_egtr(w, f), "predictions.jsonl"),
    (
        "egtr",
        "convert",
        lambda w, f: [
            "convert",
            "--checkpoint",
            str(w.root / "c" / "x.ckpt"),
            "--config",
            str(w.root / "c" / "config.json"),
            "--out",
            str(f),
        ],
        "notes.txt",
    ),
    (
        "egtr",
        "train",
        lambda w, f: [
            "train",
            "--config",
            str(CONFIG),
            "--data",
            str(SAMPLES / "vg"),
            "--init",
            str(EGTR),
            "--out",
            str(f),
        ],
        "metrics.jsonl",
    ),
]


@pytest.mark.parametrize(
    ("tool", "command", "argv", "name"), FOREIGN, ids=[f"{t}-{c}" for t, c, _, _ in FOREIGN]
)
def test_never_writes_over_a_file_it_did_not_create(
    world: World,
    capfd: pytest.CaptureFixture[str],
    tool: str,
    command: str,
    argv: Callable[[World, Path], list[str]],
    name: str,
) -> None:
    _inputs_for_convert_and_train(world)
    foreign = world.root / "foreign"
    foreign.mkdir()
    (foreign / name).write_text("my own notes\nnot results\n")
    before = snapshot(world.root)
    status, _, err = run(tool, argv(world, foreign), capfd)
    assert_one_line_error(tool, command, status, err)
    assert "--overwrite" in err
    assert snapshot(world.root) == before
