"""Atomic replacement, resumable JSON Lines results and run manifests (vl_core.files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vl_core.files import (
    OutputExistsError,
    ResultsFileError,
    RowWriter,
    atomic_output,
    atomic_save,
    atomic_write,
    check_manifest,
    error_text,
    file_fingerprint,
    id_key,
    read_results,
    refuse_input_as_output,
    write_json,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail_midway() -> None:
        with atomic_output(target) as handle:
            handle.write("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []

    def broken(path: Path) -> None:
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(target, broken)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_save_and_write_json(tmp_path: Path) -> None:
    saved = atomic_save(tmp_path / "sub" / "blob.bin", lambda p: p.write_bytes(b"\x00\x01"))
    assert saved.read_bytes() == b"\x00\x01"
    write_json(tmp_path / "r.json", {"word": "café"})
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == {"word": "café"}
    assert "café" in (tmp_path / "r.json").read_text(encoding="utf-8")  # not \\u escaped
    with pytest.raises(ValueError, match="mode"):
        atomic_output(tmp_path / "x", "a").__enter__()


def test_rows_resume_after_a_torn_line_and_retry_errors(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    with RowWriter(out) as writer:
        writer.write({"id": 1, "value": "a"})
        writer.write({"id": "1", "value": "b"})
        writer.write({"id": 2, "error": "unreadable image"})
    with out.open("ab") as handle:
        handle.write(b'{"id": 3, "val')  # an interrupted write
    found = read_results(out)
    assert found.done == {id_key(1), id_key("1")}
    assert found.retried == 1
    assert found.repaired == ["line 4: truncated last line (interrupted run)"]
    assert [row["value"] for row in found.rows] == ["a", "b"]
    # the file was repaired: the next row starts on its own line
    with RowWriter(out) as writer:
        writer.write({"id": 3, "value": "c"})
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, "1", 3]


def test_read_results_keeps_error_rows_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text('{"id": 1, "error": "bad"}\n')
    found = read_results(out, retry_errors=False)
    assert found.retried == 0
    assert found.done == {id_key(1)}
    assert out.read_text() == '{"id": 1, "error": "bad"}\n'


def test_a_foreign_file_is_never_rewritten(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\nmilk\n")
    with pytest.raises(OutputExistsError, match=r"not a results file .*line 1.*--overwrite"):
        read_results(notes)
    assert notes.read_text() == "shopping list\nmilk\n"
    # also when only a middle line is foreign
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"id": 1}\n[1, 2]\n{"id": 2}\n')
    with pytest.raises(OutputExistsError, match="line 2"):
        read_results(mixed)


def test_missing_and_bom_files(tmp_path: Path) -> None:
    assert read_results(tmp_path / "none.jsonl").done == set()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": 7}\n')
    assert read_results(bom).done == {id_key(7)}


def test_row_writer_creates_nothing_without_rows(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "rows.jsonl"
    RowWriter(out).close()
    assert not out.exists()


def test_manifest_refuses_changed_inputs_and_settings(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"id": 1}\n')
    manifest = tmp_path / "run.json"
    record = {"data": file_fingerprint(data), "epsilon": -5e-5}
    assert check_manifest(manifest, record) is None
    assert check_manifest(manifest, record) == json.loads(manifest.read_text())
    data.write_text('{"id": 2}\n')
    changed = {"data": file_fingerprint(data), "epsilon": -1e-4}
    with pytest.raises(ResultsFileError) as info:
        check_manifest(manifest, changed)
    message = str(info.value)
    assert "data:" in message
    assert "epsilon: -5e-05 -> -0.0001" in message
    assert "--overwrite" in message
    check_manifest(manifest, changed, overwrite=True)
    assert json.loads(manifest.read_text())["epsilon"] == -1e-4


def test_fingerprint_sees_content_not_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 9 + b"y")
    assert file_fingerprint(a)["size"] == 10
    assert file_fingerprint(a) != file_fingerprint(b)


def test_refuse_input_as_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"png")
    refuse_input_as_output([tmp_path / "drawing.png"], [photo])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputExistsError, match="is the input"):
        refuse_input_as_output(["photo.png"], [photo])


def test_error_text() -> None:
    assert error_text(ValueError("bad line")) == "bad line"
    assert error_text(KeyError()) == "KeyError"
