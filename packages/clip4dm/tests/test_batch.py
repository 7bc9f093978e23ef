"""Batch detection over a pairs JSONL file: error rows, resumption, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm import CLIP4DM
from clip4dm.batch import BatchSummary, PairsError, manifest_path, run_pairs
from clip4dm.cli import main
from vl_core.files import OutputExistsError, ResultsFileError


def _write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "every row must end with a newline"
    return [json.loads(line) for line in text.split("\n") if line]  # not splitlines(): U+2028


def _assert_same_detection(row: dict[str, Any], expected: dict[str, Any]) -> None:
    assert row["caption"] == expected["caption"]
    assert [w["word"] for w in row["words"]] == [w["word"] for w in expected["words"]]
    assert [w["score"] for w in row["words"]] == pytest.approx(
        [w["score"] for w in expected["words"]], rel=1e-4, abs=1e-8
    )
    assert [w["word"] for w in row["misaligned"]] == [w["word"] for w in expected["misaligned"]]
    for key in ("clip_score", "f_clip_score", "negative_sum", "cosine"):
        assert row[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-8), key
    assert row["truncated"] == expected["truncated"]


@pytest.fixture(scope="module")
def hf_detector(tiny_hf_dir: Path) -> CLIP4DM:
    return CLIP4DM(f"hf:{tiny_hf_dir}")


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """Nine lines: three good pairs (one without id, one in a sub-folder), a blank line and five
    bad ones (missing image, non-image file, empty caption, invalid JSON, missing field)."""
    data = tmp_path / "data"
    _write_image(data / "cat.png", 1)
    _write_image(data / "sub" / "dog.jpg", 2, (64, 32))
    (data / "notes.txt").write_text("this is not an image\n")
    lines = [
        json.dumps({"id": "a", "image": "cat.png", "text": "a cat on a red sofa."}),
        json.dumps({"id": "b", "image": "missing.png", "text": "a dog"}),
        json.dumps({"id": "c", "image": "notes.txt", "text": "a bird"}),
        json.dumps({"id": "d", "image": "cat.png", "text": "   "}),
        '{"id": "e", "image": "cat.png", "text": "a cat',
        json.dumps({"image": "sub/dog.jpg", "text": 'a dog "running" on grass...'}),
        "",
        json.dumps({"id": "g", "text": "no image here"}),
        json.dumps({"id": 9, "image": str((data / "cat.png").resolve()), "text": "two cats"}),
    ]
    path = data / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"a": ("cat.png", "a cat on a red sofa."), 6: ("sub/dog.jpg", 'a dog "running" on grass...'),
        9: ("cat.png", "two cats")}  # fmt: skip
ERRORS = {  # id -> (line, words expected in the message)
    "b": (2, "no such file"),
    "c": (3, "not a recognised image format"),
    "d": (4, "empty"),
    5: (5, "invalid JSON"),
    "g": (8, "missing field"),
}


def test_pairs_cli_writes_results_and_error_rows(
    pairs_file: Path, tiny_hf_dir: Path, hf_detector: CLIP4DM, capsys: pytest.CaptureFixture[str]
) -> None:
    out = pairs_file.parent / "results.jsonl"
    argv = ["detect", "--pairs", str(pairs_file), "--out", str(out), "--model", f"hf:{tiny_hf_dir}"]
    assert main([*argv, "--batch-size", "2", "--quiet"]) == 1  # finished, with error rows
    captured = capsys.readouterr()
    assert "3 done, 0 skipped, 5 errors" in captured.out
    assert "5 pair(s) could not be scored" in captured.err
    rows = _rows(out)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == 8
    for pair_id, (line, message) in ERRORS.items():
        row = by_id[pair_id]
        assert set(row) == {"id", "line", "error"}
        assert row["line"] == line
        assert message in row["error"]
    data = pairs_file.parent
    for pair_id, (image, text) in GOOD.items():
        row = by_id[pair_id]
        assert "error" not in row
        assert Path(row["image"]).resolve() == (data / image).resolve()
        expected = hf_detector.detect(data / image, text).to_dict()
        _assert_same_detection(row, expected)


def test_rerun_skips_finished_ids_without_loading_the_model(
    pairs_file: Path, tiny_hf_dir: Path
) -> None:
    out = pairs_file.parent / "results.jsonl"
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    first = run_pairs(pairs_file, out, detector, progress=False)
    assert (first.done, first.skipped, first.errors) == (3, 0, 5)
    before = {row["id"]: row for row in _rows(out) if "error" not in row}

    def no_model() -> CLIP4DM:
        raise AssertionError("the model must not be loaded when only error rows remain")

    # Only the error rows are retried; they fail again without needing the model.
    second = run_pairs(pairs_file, out, no_model, progress=False)
    assert (second.done, second.skipped, second.errors, second.retried) == (0, 3, 5, 5)
    assert second.dropped == []
    rows = _rows(out)
    assert len({json.dumps(r["id"]) for r in rows}) == len(rows) == 8
    assert {r["id"]: r for r in rows if "error" not in r} == before


def test_truncated_last_row_is_repaired_and_recomputed(pairs_file: Path, tiny_hf_dir: Path) -> None:
    out = pairs_file.parent / "results.jsonl"
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    run_pairs(pairs_file, out, detector, batch_size=2, progress=False)
    complete = _rows(out)
    # Simulate a crash mid-write: cut the file in the middle of its last line.
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last_start + (len(data) - last_start) // 2])
    torn_id = complete[-1]["id"]

    summary = run_pairs(pairs_file, out, detector, batch_size=2, progress=False)
    assert summary.dropped == [f"line {len(complete)}: truncated last line (interrupted run)"]
    assert summary.retried == 5
    rows = _rows(out)  # every line parses
    ids = [json.dumps(r["id"]) for r in rows]
    assert len(ids) == len(set(ids)) == 8
    assert torn_id in {r["id"] for r in rows}

    def key(row: dict[str, Any]) -> str:
        return json.dumps(row["id"])

    assert sorted(map(key, rows)) == sorted(map(key, complete))
    final = {key(r): r for r in rows}
    for row in complete:
        if "error" in row:
            assert final[key(row)]["error"] == row["error"]
        else:
            _assert_same_detection(final[key(row)], row)


def test_last_row_without_newline_is_kept(pairs_file: Path, tiny_hf_dir: Path) -> None:
    out = pairs_file.parent / "results.jsonl"
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    run_pairs(pairs_file, out, detector, progress=False)
    good = [r for r in _rows(out) if "error" not in r]
    out.write_text("\n".join(json.dumps(r) for r in good), encoding="utf-8")  # no final newline
    summary = run_pairs(pairs_file, out, detector, progress=False)
    assert (summary.done, summary.skipped) == (0, 3)
    assert len(_rows(out)) == 8


def test_fixed_error_rows_are_retried(pairs_file: Path, tiny_hf_dir: Path) -> None:
    out = pairs_file.parent / "results.jsonl"
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    run_pairs(pairs_file, out, detector, progress=False)
    _write_image(pairs_file.parent / "missing.png", 3)  # the user fixes the missing image
    summary = run_pairs(pairs_file, out, detector, progress=False)
    assert (summary.done, summary.skipped, summary.errors) == (1, 3, 4)
    rows = {r["id"]: r for r in _rows(out)}
    assert len(rows) == 8
    assert "error" not in rows["b"]
    assert rows["b"]["caption"] == "a dog"


def test_images_root_and_duplicate_ids(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    _write_image(images / "x.png", 4)
    pairs = tmp_path / "lists" / "pairs.jsonl"
    pairs.parent.mkdir()
    lines = [
        {"id": 1, "image": "x.png", "text": "a box"},
        {"id": "1", "image": "x.png", "text": "a string id is another id"},
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out" / "results.jsonl"
    summary = run_pairs(
        pairs, out, CLIP4DM(f"hf:{tiny_hf_dir}"), images_root=images, progress=False
    )
    assert (summary.done, summary.errors) == (2, 0)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [1, "1"]
    assert {r["image"] for r in rows} == {str(images / "x.png")}

    # Ids must be unique (a sharded run matches rows by id): a duplicate is refused before any
    # file is touched, naming the lines; so is a line numbered by its line that meets an id.
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        "".join(
            json.dumps(line) + "\n" for line in [*lines, {"id": 1, "image": "x.png", "text": "b"}]
        )
        + json.dumps({"image": "x.png", "text": "line 4 takes id 4"})
        + "\n"
        + json.dumps({"id": 4, "image": "x.png", "text": "another 4"})
        + "\n"
    )
    with pytest.raises(
        PairsError, match=r"duplicate ids: 1 \(lines 1 and 3\), 4 \(lines 4 and 5\)"
    ):
        run_pairs(dup, tmp_path / "dup-out.jsonl", _FlakyDetector(), progress=False)
    assert main(["detect", "--pairs", str(dup), "--out", str(tmp_path / "dup-out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "a line without an id is numbered by its line" in err
    assert not (tmp_path / "dup-out.jsonl").exists()
    assert not manifest_path(tmp_path / "dup-out.jsonl").exists()


class _Result:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.text}


class _FlakyDetector:
    """Fails any batch that contains "boom" (and "boom" alone); interrupts on "stop"."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.image_ids: list[list[int]] = []

    def detect(self, image: Image.Image, text: str) -> _Result:
        if "boom" in text:
            raise RuntimeError("model exploded")
        return _Result(text)

    def detect_batch(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[_Result]:
        self.batches.append(list(texts))
        self.image_ids.append([id(image) for image in images])
        if any("stop" in t for t in texts):
            raise KeyboardInterrupt
        if any("boom" in t for t in texts):
            raise RuntimeError("batch failed")
        return [_Result(t) for t in texts]


def _simple_pairs(tmp_path: Path, texts: Sequence[str]) -> Path:
    _write_image(tmp_path / "p.png", 5, (8, 8))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": "p.png", "text": t}) + "\n" for t in texts))
    return path


def test_failing_batch_falls_back_to_single_pairs(tmp_path: Path) -> None:
    pairs = _simple_pairs(tmp_path, ["one", "two boom", "three", "four", "five"])
    out = tmp_path / "results.jsonl"
    fake = _FlakyDetector()
    summary = run_pairs(pairs, out, fake, batch_size=3, progress=False)
    assert (summary.done, summary.errors) == (4, 1)
    assert fake.batches == [["one", "two boom", "three"], ["four", "five"]]
    # All pairs use the same file: within a batch they share one loaded image (encoded once).
    assert [len(set(ids)) for ids in fake.image_ids] == [1, 1]
    rows = {r["id"]: r for r in _rows(out)}
    assert rows[2] == {"id": 2, "line": 2, "error": "model exploded"}
    assert [rows[i]["caption"] for i in (1, 3, 4, 5)] == ["one", "three", "four", "five"]


class _InterruptOnce(_FlakyDetector):
    """Interrupts (Ctrl-C) the first batch holding "stop"; the text is fine afterwards."""

    interrupted = False

    def detect_batch(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[_Result]:
        if any("stop" in t for t in texts) and not _InterruptOnce.interrupted:
            _InterruptOnce.interrupted = True
            raise KeyboardInterrupt
        return [_Result(t) for t in texts]


def test_interrupted_run_keeps_finished_rows_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = _simple_pairs(tmp_path, ["one", "two", "three stop", "four"])
    out = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_pairs(pairs, out, _FlakyDetector(), batch_size=2, progress=False)
    assert [r["id"] for r in _rows(out)] == [1, 2]

    # Through the CLI, an interrupt is reported without a traceback (exit 130), with the command
    # that resumes the run; rerunning it finishes the run.
    import clip4dm.cli as cli

    monkeypatch.setattr(_InterruptOnce, "interrupted", False)
    monkeypatch.setattr(cli, "_build_detector", lambda args: _InterruptOnce())
    out = tmp_path / "cli.jsonl"
    argv = ["detect", "--pairs", str(pairs), "--out", str(out), "--batch-size", "2", "--quiet"]
    assert main(argv) == 130
    assert [r["id"] for r in _rows(out)] == [1, 2]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"resume with: clip4dm detect --pairs {pairs} --out {out} --batch-size 2 --quiet" in err
    assert main(argv) == 0
    assert sorted(r["id"] for r in _rows(out)) == [1, 2, 3, 4]


def test_missing_pairs_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(PairsError, match="not found"):
        run_pairs(tmp_path / "nope.jsonl", tmp_path / "out.jsonl", _FlakyDetector())
    code = main(["detect", "--pairs", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o.run.json").exists()
    assert code == 2
    err = capsys.readouterr().err
    assert "not found" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_summary_text() -> None:
    assert str(BatchSummary(done=3, skipped=2, errors=1)) == "3 done, 2 skipped, 1 errors"


def test_unavailable_model_fails_cleanly_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pairs = _simple_pairs(tmp_path, ["a cat"])
    out = tmp_path / "results.jsonl"
    argv = ["detect", "--pairs", str(pairs), "--out", str(out), "--quiet"]
    assert main(argv) == 2  # the default hub model cannot be had offline
    err = capsys.readouterr().err
    assert "cannot load model" in err
    assert "Traceback" not in err
    assert not out.exists()


# -- nothing lost: foreign outputs, changed inputs, undecodable lines, exit codes -----------------


def _cli(pairs: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", "--pairs", str(pairs), "--out", str(out), "--quiet", *extra]


def test_an_unrelated_output_file_is_never_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip4dm.cli as cli

    monkeypatch.setattr(cli, "_build_detector", lambda args: _FlakyDetector())
    pairs = _simple_pairs(tmp_path, ["one", "two"])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nnot results at all\n")
    assert main(_cli(pairs, notes)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a results file of this command" in err
    assert "--overwrite" in err
    assert notes.read_text() == "my notes\nnot results at all\n"
    assert not manifest_path(notes).exists()
    with pytest.raises(OutputExistsError):
        run_pairs(pairs, notes, _FlakyDetector(), progress=False)

    assert main([*_cli(pairs, notes), "--overwrite"]) == 0  # asked for: start over
    assert [r["caption"] for r in _rows(notes)] == ["one", "two"]


def test_the_pairs_file_is_never_the_output(tmp_path: Path) -> None:
    pairs = _simple_pairs(tmp_path, ["one"])
    before = pairs.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="never writes over its inputs"):
            run_pairs(pairs, pairs, _FlakyDetector(), progress=False, overwrite=overwrite)
    assert pairs.read_bytes() == before


def test_resume_over_a_changed_pairs_file_or_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip4dm.cli as cli

    monkeypatch.setattr(cli, "_build_detector", lambda args: _FlakyDetector())
    pairs = _simple_pairs(tmp_path, ["one", "two"])
    out = tmp_path / "results.jsonl"
    assert main(_cli(pairs, out)) == 0
    record = json.loads(manifest_path(out).read_text())
    assert record["pairs"]["size"] == pairs.stat().st_size
    assert (record["mode"], record["epsilon"], record["layers"]) == ("threshold", -5e-5, 3)
    before = out.read_bytes()

    # Same path, other contents: the old rows would be kept as done.
    pairs.write_text(pairs.read_text().replace("one", "uno"))
    assert main(_cli(pairs, out)) == 2
    err = capsys.readouterr().err
    assert "made from other inputs or settings (pairs:" in err
    assert out.read_bytes() == before
    # Other settings.
    pairs.write_text(pairs.read_text().replace("uno", "one"))
    assert main([*_cli(pairs, out), "--epsilon", "-1e-4"]) == 2
    assert "epsilon: -5e-05 -> -0.0001" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(_cli(pairs, out)) == 0  # the same inputs and settings resume
    assert "0 done, 2 skipped" in capsys.readouterr().out

    pairs.write_text(pairs.read_text().replace("one", "uno"))
    assert main([*_cli(pairs, out), "--overwrite"]) == 0  # start over
    assert [r["caption"] for r in _rows(out)] == ["uno", "two"]
    with pytest.raises(ResultsFileError, match="model"):
        run_pairs(pairs, out, _FlakyDetector(), settings={"model": "other"}, progress=False)


def test_a_run_that_failed_before_any_row_does_not_pin_its_settings(tmp_path: Path) -> None:
    pairs = _simple_pairs(tmp_path, ["one"])
    out = tmp_path / "results.jsonl"

    def broken() -> _FlakyDetector:
        raise OSError("no such model")

    with pytest.raises(OSError, match="no such model"):
        run_pairs(pairs, out, broken, settings={"model": "typo"}, progress=False)
    assert not out.exists()
    summary = run_pairs(pairs, out, _FlakyDetector(), settings={"model": "right"}, progress=False)
    assert summary.done == 1
    assert json.loads(manifest_path(out).read_text())["model"] == "right"


def test_undecodable_bytes_and_a_byte_order_mark(tmp_path: Path) -> None:
    _write_image(tmp_path / "p.png", 5, (8, 8))
    lines = [
        json.dumps({"image": "p.png", "text": "first"}).encode(),
        b'{"image": "p.png", "text": "caf\xe9 latte"}',  # Latin-1, not UTF-8
        json.dumps({"image": "p.png", "text": "third \u2028 line"}, ensure_ascii=False).encode(),
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    out = tmp_path / "results.jsonl"
    summary = run_pairs(pairs, out, _FlakyDetector(), progress=False)
    assert (summary.done, summary.errors) == (2, 1)
    rows = {r["id"]: r for r in _rows(out)}
    assert rows[1] == {"id": 1, "image": str(tmp_path / "p.png"), "caption": "first"}
    assert rows[2] == {
        "id": 2,
        "line": 2,
        "error": "not UTF-8 text (byte 0xe9 at column 32)",
    }
    assert rows[3]["caption"] == "third \u2028 line"


def test_exit_status_counts_error_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip4dm.cli as cli

    monkeypatch.setattr(cli, "_build_detector", lambda args: _FlakyDetector())
    pairs = _simple_pairs(tmp_path, ["one", "two boom", "three"])
    out = tmp_path / "results.jsonl"
    assert main(_cli(pairs, out)) == 1
    captured = capsys.readouterr()
    assert "2 done, 0 skipped, 1 errors" in captured.out
    assert "1 pair(s) could not be scored" in captured.err
    good = _simple_pairs(tmp_path / "good", ["one", "three"])
    assert main(_cli(good, tmp_path / "good.jsonl")) == 0
    assert "could not be scored" not in capsys.readouterr().err


def test_no_progress_is_a_deprecated_alias_of_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip4dm.cli as cli

    seen: list[bool] = []

    def detector(args: Any) -> _FlakyDetector:
        seen.append(args.quiet)
        return _FlakyDetector()

    monkeypatch.setattr(cli, "_build_detector", detector)
    pairs = _simple_pairs(tmp_path, ["one"])
    argv = ["detect", "--pairs", str(pairs), "--out", str(tmp_path / "r.jsonl"), "--no-progress"]
    assert main(argv) == 0
    assert seen == [True]
    assert "--no-progress is deprecated" in capsys.readouterr().err


# -- at scale: torchrun ---------------------------------------------------------------------------


def _sharded_pairs(tmp_path: Path) -> Path:
    """Seven lines (an invalid one and a missing image among them): four blocks of two."""
    data = tmp_path / "data"
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        _write_image(data / name, seed, (32, 24))
    lines = [
        json.dumps({"image": "a.png", "text": "a red square"}),
        json.dumps({"image": "b.png", "text": "two blue circles"}),
        json.dumps({"image": "c.png", "text": "a green triangle"}),
        '{"image": "a.png", "text": ',
        json.dumps({"image": "missing.png", "text": "nothing"}),
        json.dumps({"image": "b.png", "text": "a small yellow star"}),
        json.dumps({"image": "c.png", "text": "a cat"}),
    ]
    pairs = data / "pairs.jsonl"
    pairs.write_text("".join(line + "\n" for line in lines))
    return pairs


def _torchrun(nproc: int, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node N -m clip4dm ARGV`` on the CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), "-m", "clip4dm", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_shards_and_merges_like_one_process(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes write what one process writes, also when resuming what an interrupted
    run with another number of processes left (the final file and the part files of its ranks,
    with a torn line)."""
    from vl_core.runs import leftover_parts, part_path

    pairs = _sharded_pairs(tmp_path)
    common = ["--model", f"hf:{tiny_hf_dir}", "--device", "cpu", "--batch-size", "2", "--quiet"]

    def argv(out: Path) -> list[str]:
        return ["detect", "--pairs", str(pairs), "--out", str(out), *common]

    single = tmp_path / "single.jsonl"
    assert main(argv(single)) == 1  # two error rows
    expected = single.read_bytes()
    lines = expected.decode().splitlines(keepends=True)
    assert len(lines) == 7
    assert [json.loads(line)["id"] for line in lines] == [1, 2, 3, 4, 5, 6, 7]

    sharded = tmp_path / "sharded.jsonl"
    done = _torchrun(2, argv(sharded))
    assert done.returncode == 1, done.stderr[-3000:]
    assert sharded.read_bytes() == expected
    assert leftover_parts(sharded) == []
    assert "5 done, 0 skipped, 2 errors" in done.stdout
    assert done.stdout.count("done,") == 1  # rank 0 reports

    # An interrupted 3-process run left a final file and three parts (one with a torn line):
    # 2 processes finish it, computing only the missing rows.
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text(lines[0])
    part_path(resumed, 0).write_text(lines[4])  # an error row: retried
    part_path(resumed, 1).write_text(lines[2] + lines[1])
    part_path(resumed, 2).write_text(lines[5][:20])  # torn by the interruption
    done = _torchrun(2, argv(resumed))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "2 done, 3 skipped, 2 errors" in done.stdout  # 1-3 kept; 4 and 5 errors; 6, 7 new
    assert resumed.read_bytes() == expected
    assert leftover_parts(resumed) == []

    # What an interrupted 2-process run left, finished by one process.
    again = tmp_path / "again.jsonl"
    part_path(again, 0).write_text(lines[0] + lines[1] + lines[4])
    part_path(again, 1).write_text(lines[2] + lines[3][:10])
    capsys.readouterr()
    assert main(argv(again)) == 1
    assert "2 done, 3 skipped, 2 errors" in capsys.readouterr().out
    assert again.read_bytes() == expected
    assert leftover_parts(again) == []


def test_a_resumed_batch_is_scored_whole(tmp_path: Path) -> None:
    """A batch with some rows missing is scored with all its pairs (as in the uninterrupted run,
    so the missing rows come out the same) and only the missing rows are written."""
    pairs = _simple_pairs(tmp_path, ["one", "two", "three", "four", "five"])
    out = tmp_path / "results.jsonl"
    run_pairs(pairs, out, _FlakyDetector(), batch_size=2, progress=False)
    complete = out.read_bytes()
    lines = complete.decode().splitlines(keepends=True)
    out.write_text(lines[0] + lines[2] + lines[3])  # rows 2 and 5 lost
    fake = _FlakyDetector()
    summary = run_pairs(pairs, out, fake, batch_size=2, progress=False)
    assert (summary.done, summary.skipped) == (2, 3)
    assert fake.batches == [["one", "two"], ["five"]]  # the block of 3 and 4 is complete
    assert out.read_bytes() == complete  # in input order again
