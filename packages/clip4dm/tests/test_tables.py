"""``detect --pairs`` over CSV, TSV and Parquet tables: named columns, error rows, resumption."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm import CLIP4DM
from clip4dm._tables import Columns, open_table, table_format
from clip4dm.batch import MissingColumnError, PairsError, manifest_path, run_pairs
from clip4dm.cli import main
from vl_core.cli import MissingExtraError
from vl_core.files import ResultsFileError

pa: ModuleType | None
pq: ModuleType | None
try:  # pyarrow has no type hints: imported as a plain module
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")
except ImportError:  # CI installs it (the clip4dm[parquet] extra)
    pa = pq = None

needs_pyarrow = pytest.mark.skipif(pq is None, reason="pyarrow is not installed (clip4dm[parquet])")


def _write_image(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


class _Result:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.text}


class _Echo:
    """A detector whose detection is the caption; records what it was asked."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def detect(self, image: Image.Image, text: str) -> _Result:
        return _Result(text)

    def detect_batch(
        self, images: Sequence[Image.Image], texts: Sequence[str], *, batch_size: int = 32
    ) -> list[_Result]:
        self.batches.append(list(texts))
        return [_Result(t) for t in texts]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    _write_image(folder / "cat.png", 1)
    _write_image(folder / "dog.png", 2)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _echo_cli(monkeypatch: pytest.MonkeyPatch) -> _Echo:
    import clip4dm.cli as cli

    echo = _Echo()
    monkeypatch.setattr(cli, "_build_detector", lambda args: echo)
    return echo


def test_the_format_comes_from_the_extension() -> None:
    assert [table_format(n) for n in ("a.csv", "b.TSV", "c.parquet", "d.pq")] == [
        "csv",
        "tsv",
        "parquet",
        "parquet",
    ]
    assert [table_format(n) for n in ("a.jsonl", "b.json", "pairs.txt", "noext")] == ["jsonl"] * 4


def test_csv_with_named_columns_and_bad_rows(
    images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = images / "pairs.csv"
    pairs.write_bytes(
        b"caption,url,extra\n"  # line 1: the header
        b"a cat on a sofa,cat.png,x\n"  # line 2
        b'"a dog,\nrunning",dog.png,y\n'  # lines 3-4: a quoted caption over two lines
        b"\n"  # line 5: blank
        b",cat.png,z\n"  # line 6: empty caption
        b"a bird,notes.txt,z\n"  # line 7: not an image
        b"a fish,missing.png,z\n"  # line 8: no such file
        b"too,few\n"  # line 9: wrong number of fields
        b"caf\xe9,cat.png,z\n"  # line 10: not UTF-8
        b"   ,cat.png,z\n"  # line 11: whitespace-only caption
        b"two cats,,z\n"  # line 12: no image
        b"last,cat.png,z"  # line 13: no final newline
    )
    echo = _echo_cli(monkeypatch)
    out = images / "results.jsonl"
    argv = ["detect", "--pairs", str(pairs), "--out", str(out), "--quiet", "--batch-size", "3"]
    assert main([*argv, "--image-column", "url", "--text-column", "caption"]) == 1
    captured = capsys.readouterr()
    assert "3 done, 0 skipped, 7 errors" in captured.out
    rows = _rows(out)
    # The id defaults to the line number, which the error rows name too (one rule for all formats).
    assert [row["id"] for row in rows] == [2, 3, 6, 7, 8, 9, 10, 11, 12, 13]
    by_id = {row["id"]: row for row in rows}
    assert by_id[2] == {"id": 2, "image": str(images / "cat.png"), "caption": "a cat on a sofa"}
    assert by_id[3]["caption"] == "a dog,\nrunning"
    assert by_id[13]["caption"] == "last"
    expected = {
        6: "'caption' is empty or whitespace-only",
        7: "not a recognised image format",
        8: "no such file",
        9: "expected 3 fields (the header's), got 2",
        10: "not UTF-8 text (byte 0xe9)",
        11: "'caption' is empty or whitespace-only",
        12: "'url' must be a non-empty path string",
    }
    for number, message in expected.items():
        assert set(by_id[number]) == {"id", "line", "error"}
        assert by_id[number]["line"] == number
        assert message in by_id[number]["error"]
    assert echo.batches[0] == ["a cat on a sofa", "a dog,\nrunning"]
    record = json.loads(manifest_path(out).read_text())
    assert record["pairs"]["size"] == pairs.stat().st_size
    assert record["columns"] == {"image": "url", "text": "caption", "id": "id"}


def test_an_id_column_tsv_and_a_resume(
    images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = _echo_cli(monkeypatch)
    pairs = images / "pairs.tsv"
    pairs.write_text("key\timage\ttext\nk1\tcat.png\ta cat\nk2\tdog.png\ta dog\n\tcat.png\tnone\n")
    out = images / "results.jsonl"
    argv = ["detect", "--pairs", str(pairs), "--out", str(out), "--quiet", "--id-column", "key"]
    assert main(argv) == 1
    rows = _rows(out)
    assert [row["id"] for row in rows] == ["k1", "k2", 4]  # ids of an id column are strings
    assert rows[2] == {"id": 4, "line": 4, "error": "no value in column 'key'"}
    capsys.readouterr()
    echo.batches.clear()
    assert main(argv) == 1  # the finished rows are kept, the error row is retried
    assert "0 done, 2 skipped, 1 errors" in capsys.readouterr().out
    assert echo.batches == []  # no pair to score: the model is not even loaded
    assert _rows(out) == rows

    # The columns are settings of the run: another choice is refused, naming it.
    assert main([*argv[:-1], "key2"]) == 2
    assert "columns" in capsys.readouterr().err
    # So is a changed table (the file is fingerprinted).
    pairs.write_text(pairs.read_text().replace("a dog", "a puppy"))
    assert main(argv) == 2
    assert "made from other inputs or settings (pairs:" in capsys.readouterr().err
    assert _rows(out) == rows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "pairs.csv has no column 'text' (--text-column): its columns are image, caption"),
        (
            ["--text-column", "caption", "--id-column", "uid"],
            "pairs.csv has no column 'uid' (--id-column): its columns are image, caption",
        ),
        (
            ["--text-column", "caption", "--image-column", "img"],
            "pairs.csv has no column 'img' (--image-column): its columns are image, caption",
        ),
    ],
)
def test_a_missing_column_is_a_one_line_usage_error(
    images: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    message: str,
) -> None:
    _echo_cli(monkeypatch)
    pairs = images / "pairs.csv"
    pairs.write_text("image,caption\ncat.png,a cat\n")
    out = images / "results.jsonl"
    assert main(["detect", "--pairs", str(pairs), "--out", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert err == f"clip4dm detect: error: {message}\n"
    assert not out.exists()
    assert not manifest_path(out).exists()
    with pytest.raises(MissingColumnError) as info:
        open_table(pairs, Columns(text="txt"))
    assert (info.value.role, info.value.column, info.value.available) == (
        "text",
        "txt",
        ["image", "caption"],
    )


def test_column_options_go_with_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "x.png", "a cat", "--text-column", "caption"]) == 2
    assert "go with --pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["detect", "--pairs", "p.csv", "--out", "o.jsonl", "--text-column", ""])
    assert info.value.code == 2


def test_unusable_tables_are_refused_before_any_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(PairsError, match=r"empty\.csv is empty: a CSV pairs file needs a header"):
        run_pairs(empty, out, _Echo(), progress=False)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("image,text,text\n")
    with pytest.raises(PairsError, match="more than one column named 'text'"):
        run_pairs(doubled, out, _Echo(), progress=False)
    with pytest.raises(PairsError, match="not found"):
        run_pairs(tmp_path / "nope.csv", out, _Echo(), progress=False)
    assert not out.exists()
    assert not manifest_path(out).exists()


def test_jsonl_fields_can_be_named_too(images: Path) -> None:
    pairs = images / "pairs.jsonl"
    lines = [{"uid": "u1", "path": "cat.png", "caption": "a cat"}, {"path": "dog.png"}]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = images / "results.jsonl"
    columns = Columns(image="path", text="caption", id="uid")
    summary = run_pairs(pairs, out, _Echo(), columns=columns, progress=False)
    assert (summary.done, summary.errors) == (1, 1)
    assert _rows(out) == [
        {"id": "u1", "image": str(images / "cat.png"), "caption": "a cat"},
        {"id": 2, "line": 2, "error": "missing field(s): caption"},
    ]


def test_a_csv_scores_as_its_jsonl_twin(images: Path, tiny_hf_dir: Path) -> None:
    """The same pairs as CSV and as JSON Lines give the same rows (real tiny CLIP)."""
    pairs = [("p1", "cat.png", 'a cat "on" a red sofa'), ("p2", "dog.png", "a dog, on grass")]
    jsonl = images / "pairs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "image": p, "text": t}) + "\n" for i, p, t in pairs)
    )
    table = images / "pairs.csv"
    table.write_text(
        "id,image,text\n"
        + "".join(f'{i},{p},"{t.replace(chr(34), 2 * chr(34))}"\n' for i, p, t in pairs)
    )
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    run_pairs(jsonl, images / "from-jsonl.jsonl", detector, progress=False)
    run_pairs(table, images / "from-csv.jsonl", detector, progress=False)
    assert (images / "from-csv.jsonl").read_bytes() == (images / "from-jsonl.jsonl").read_bytes()


# -- Parquet --------------------------------------------------------------------------------------


def _write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int = 3) -> Path:
    assert pq is not None
    assert pa is not None
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@needs_pyarrow
def test_parquet_streams_rows_and_names_bad_rows(
    images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip4dm._tables as tables

    monkeypatch.setattr(tables, "_PARQUET_ROWS", 2)  # several reads, across row groups
    texts = ["a cat", None, "a dog", "  ", "a bird", "a fish", "two cats"]
    paths = ["cat.png", "cat.png", "dog.png", "cat.png", "notes.txt", None, "cat.png"]
    pairs = _write_parquet(
        images / "pairs.parquet", {"image": paths, "text": texts, "other": list(range(7))}
    )
    read: list[list[str] | None] = []
    assert pq is not None
    original = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(kwargs.get("columns"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    out = images / "results.jsonl"
    echo = _Echo()
    summary = run_pairs(pairs, out, echo, batch_size=3, progress=False)
    assert (summary.done, summary.errors) == (3, 4)
    assert read == [["image", "text"]]  # no id column: the ids are the row numbers, unread
    rows = _rows(out)
    assert [row["id"] for row in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[0] == {"id": 1, "image": str(images / "cat.png"), "caption": "a cat"}
    assert rows[1] == {"id": 2, "row": 2, "error": "no value in column(s): text"}
    assert rows[3] == {"id": 4, "row": 4, "error": "'text' is empty or whitespace-only"}
    assert rows[4]["row"] == 5
    assert "not a recognised image format" in rows[4]["error"]
    assert rows[5] == {"id": 6, "row": 6, "error": "no value in column(s): image"}
    assert [row.get("caption") for row in rows] == [
        "a cat",
        None,
        "a dog",
        None,
        None,
        None,
        "two cats",
    ]
    assert echo.batches == [["a cat", "a dog"], ["two cats"]]


@needs_pyarrow
def test_parquet_ids_and_columns(
    images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _echo_cli(monkeypatch)
    pairs = _write_parquet(
        images / "pairs.parquet",
        {"uid": [10, 11, None], "url": ["cat.png", "dog.png", "cat.png"], "text": ["a", "b", "c"]},
    )
    read: list[list[str] | None] = []
    assert pq is not None
    original = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(kwargs.get("columns"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    out = images / "results.jsonl"
    argv = ["detect", "--pairs", str(pairs), "--out", str(out), "--quiet"]
    assert main([*argv, "--image-column", "url", "--id-column", "uid"]) == 1
    assert read == [["uid"], ["uid", "url", "text"]]  # the ids first, alone; then the pairs
    rows = _rows(out)
    assert [row["id"] for row in rows] == [10, 11, 3]  # integer ids stay integers
    assert rows[2] == {"id": 3, "row": 3, "error": "no value in column 'uid'"}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "clip4dm detect: error: pairs.parquet has no column 'image' (--image-column): its "
        "columns are uid, url, text\n"
    )


@needs_pyarrow
def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    fake = tmp_path / "pairs.parquet"
    fake.write_text("image,text\n")
    with pytest.raises(PairsError, match="as Parquet"):
        run_pairs(fake, tmp_path / "out.jsonl", _Echo(), progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"PAR1")
    out = tmp_path / "out.jsonl"
    with pytest.raises(MissingExtraError, match=r"pip install 'clip4dm\[parquet\]'"):
        run_pairs(pairs, out, _Echo(), progress=False)
    assert main(["detect", "--pairs", str(pairs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "clip4dm detect: error: pyarrow is not installed (Parquet pairs files): "
        "pip install 'clip4dm[parquet]'\n"
    )
    assert not out.exists()
    assert not manifest_path(out).exists()


def test_the_default_columns_leave_the_manifest_as_before(images: Path) -> None:
    """Runs started before columns could be named resume: default columns add no record."""
    pairs = images / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "cat.png", "text": "a cat"}) + "\n")
    out = images / "results.jsonl"
    run_pairs(pairs, out, _Echo(), progress=False, settings={"model": "m"})
    record = json.loads(manifest_path(out).read_text())
    assert set(record) == {"command", "pairs", "images_root", "model"}
    run_pairs(
        pairs, out, _Echo(), progress=False, settings={"model": "m"}, columns=Columns(id="id")
    )
    with pytest.raises(ResultsFileError, match="columns: null"):
        run_pairs(pairs, out, _Echo(), progress=False, columns=Columns(text="caption"))
