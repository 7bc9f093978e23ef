"""``clip4dm eval``'s word positions (``LA_exact``), chance level (``LA_chance``), the pairwise
CLIPScore metric, per-kind FOIL groups, and epsilon chosen on a validation split
(``--choose-epsilon-on``): unit checks on hand-made rows, and end to end on a tiny random CLIP,
where every candidate epsilon's figures equal a direct run at that epsilon."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm.cli import main as clip4dm_main
from clip4dm.eval import (
    BadRecord,
    DataSource,
    GroundTruth,
    Outcome,
    Sample,
    get_benchmark,
    summarise,
)
from clip4dm.eval._positions import chunk_positions, chunk_word
from clip4dm.eval.cli import main as eval_main
from clip4dm.eval.epsilon import DEFAULT_EPSILON_GRID, choose_epsilon, rejudge
from clip4dm.eval.metrics import summarise_groups
from clip4dm.results import Detection, WordScore

# -- positions -------------------------------------------------------------------------------------


def test_chunk_positions_count_split_off_punctuation_as_words() -> None:
    caption = '"Hi," said a cat.'  # clip4dm's words: " Hi ," said a cat .
    assert chunk_word(caption, 0) == "Hi"
    assert chunk_word(caption, 3) == "cat"
    assert chunk_positions(caption, [0]) == (1,)
    assert chunk_positions(caption, [3, 1]) == (3, 5)
    assert chunk_positions("A man riding a red horse.", [4, 5]) == (4, 5)
    with pytest.raises(IndexError, match="outside the caption's 4 words"):
        chunk_positions(caption, [4])
    with pytest.raises(IndexError):
        chunk_word(caption, -1)


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _ann(i: int, image: int, caption: str, foil: str = "ORIG", **extra: Any) -> dict[str, Any]:
    return {"id": i, "image_id": image, "caption": caption, "foil_word": foil, **extra}


def test_foil_loader_reads_positions_kinds_and_pairs(tmp_path: Path) -> None:
    annotations = [
        _ann(1, 7, "A red ball on the grass."),
        _ann(2, 7, "A blue ball on the grass.", "blue", foil_word_index=1, foil_kind="colour"),
        _ann(3, 7, "A red ball on the sand.", "sand", foil_word_index=5, foil_kind="place"),
        _ann(4, 7, "A red cube on the grass.", "cube", foil_word_index=1),
        _ann(5, 7, "A red cube on the grass.", "cube", foil_word_index="2"),
        _ann(6, 7, "A red cube on the grass.", "cube", foil_kind=3),
        _ann(7, 8, "Two cats.", "cats", foil_word_index=9),
        _ann(8, 8, "Two dogs.", "dogs"),
    ]
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "b.jpg"}]}
    path = _write(tmp_path / "foil.json", {**data, "annotations": annotations})
    records = get_benchmark("foil").load(DataSource(str(path), tmp_path))
    samples = {r.id: r for r in records if isinstance(r, Sample)}
    errors = {r.id: r.error for r in records if isinstance(r, BadRecord)}
    assert samples["0"].ground_truth == GroundTruth(aligned=True)
    assert (samples["0"].group, samples["0"].pair) == (None, "7")
    assert samples["1"].ground_truth.positions == (1,)
    assert (samples["1"].group, samples["1"].pair) == ("colour", "7")
    assert samples["2"].ground_truth.positions == (5,)  # "sand." → "sand" (5), "." (6)
    assert samples["2"].ground_truth.to_dict() == {
        "aligned": False,
        "words": ["sand"],
        "positions": [5],
    }
    assert samples["7"].ground_truth.positions == ()
    assert (samples["7"].group, samples["7"].pair) == (None, "8")
    assert errors == {
        "3": "foil.json: annotations[3]: 'foil_word_index' 1 names 'red', not the foil word 'cube'",
        "4": "foil.json: annotations[4]: 'foil_word_index' must be an integer, got '2'",
        "5": "foil.json: annotations[5]: 'foil_kind' must be a string, got int",
        "6": "foil.json: annotations[6]: 'foil_word_index': word index 9 is outside the "
        "caption's 2 words",
    }
    assert get_benchmark("foil").group_by == "foil_kind"


def test_hat_positions_only_when_the_grounding_is_the_caption(tmp_path: Path) -> None:
    entries = [
        {
            "sample_id": "a",
            "caption": "A cat, a red laptop.",
            "grounding": [["A", 0], ["cat,", 1], ["a", 0], ["red", 1], ["laptop.", 1]],
            "contains_hallucination": True,
            "image_path": "x.jpg",
        },
        {
            "sample_id": "b",
            "caption": "A cat on a mat.",
            "grounding": [["A cat", 1], ["on a mat.", 0]],
            "contains_hallucination": True,
            "image_path": "x.jpg",
        },
    ]
    path = _write(tmp_path / "hat.json", entries)
    records = get_benchmark("hat").load(DataSource(str(path), tmp_path))
    truth = {r.id: r.ground_truth for r in records if isinstance(r, Sample)}
    # words: A cat , a red laptop .
    assert truth["a"] == GroundTruth(False, ("cat", "red", "laptop"), positions=(1, 4, 5))
    assert truth["b"] == GroundTruth(False, ("A cat",))


# -- judging ---------------------------------------------------------------------------------------


def _detection(scores: dict[str, float], mode: str = "threshold", eps: float = -1e-3) -> Detection:
    words = [WordScore(w, i, s) for i, (w, s) in enumerate(scores.items())]
    if mode == "most_negative":
        chosen = [min(words, key=lambda w: w.score)]
    else:
        chosen = [w for w in words if w.score < eps]
    total = sum(w.score for w in chosen)
    return Detection(" ".join(scores), words, chosen, total, 0.5, 1.25, total * 0.5, mode)


SCORES = [0.0, 0.1, 0.2, -0.3, 0.1]


def test_judges_report_exact_positions_where_the_data_gives_them() -> None:
    foil = get_benchmark("foil")
    caption = "the dog chased the cat"  # foil "the" at position 3 (the second "the")
    words = [
        WordScore(w, i, s) for i, (w, s) in enumerate(zip(caption.split(), SCORES, strict=True))
    ]
    detection = Detection(caption, words, [words[3]], -0.3, 0.5, 1.25, -0.15, "most_negative")

    def judged(positions: tuple[int, ...]) -> Any:
        truth = GroundTruth(False, ("the",), positions=positions)
        return foil.judge(Sample("1", "x.jpg", caption, truth), detection)

    assert (judged((3,)).correct, judged((3,)).exact) == (True, True)
    assert (judged((0,)).correct, judged((0,)).exact) == (True, False)  # LA yes, LA_exact no
    assert judged(()).exact is None

    hat = get_benchmark("hat")
    detection = _detection({"a": 0.1, "red": -0.01, "cat": -0.02, "sat": 0.3})
    truth = GroundTruth(False, ("red", "cat"), positions=(1, 2))
    judged = hat.judge(Sample("2", "x.jpg", "a red cat sat", truth), detection)
    assert (judged.prediction, judged.correct, judged.exact) == ("red cat", True, True)
    truth = GroundTruth(False, ("red",), positions=(1,))
    judged = hat.judge(Sample("2", "x.jpg", "a red cat sat", truth), detection)
    assert (judged.correct, judged.exact) == (False, False)


# -- metrics ---------------------------------------------------------------------------------------


def _o(aligned: bool, clip: float, **kw: Any) -> Outcome:
    return Outcome(aligned=aligned, clip_score=clip, f_clip_score=-clip, **kw)


def test_exact_chance_and_pairwise_metrics() -> None:
    outcomes = [
        _o(True, 0.8, pair="A"),
        _o(True, 0.6, pair="A"),
        _o(False, 0.7, pair="A", correct=True, exact=False, chance=0.25, group="colour"),
        _o(False, 0.6, pair="A", correct=True, exact=True, chance=0.5, group="shape"),
        _o(False, 0.1, pair="B", correct=False, exact=True, chance=0.125, group="shape"),
        _o(True, 0.2, pair="C"),
        _o(False, 0.3, pair="C", correct=False, chance=0.25, group="colour"),
    ]
    metrics = summarise(outcomes, get_benchmark("foil"))
    assert metrics["LA"] == 0.5
    assert metrics["LA_exact"] == 2 / 3  # only the three misaligned captions with positions
    assert metrics["LA_chance"] == (0.25 + 0.5 + 0.125 + 0.25) / 4
    # 0.7: above 0.6 only -> 1/2; 0.6: above 0.8 and tied with 0.6 -> 1.5/2; 0.3 vs 0.2 -> 0;
    # pair B has no aligned caption: no comparison
    assert metrics["pairwise"] == (0.5 + 0.75 + 0.0) / 3
    groups = summarise_groups(outcomes, get_benchmark("foil"))
    assert list(groups) == ["colour", "shape"]
    # the originals have no group, but the groups' pairwise still compares with them
    assert groups["colour"]["pairwise"] == (0.5 + 0.0) / 2
    assert groups["shape"]["pairwise"] == 0.75
    assert groups["shape"]["LA_exact"] == 1.0
    plain = summarise([_o(True, 0.5), _o(False, 0.4, correct=True)], get_benchmark("foil"))
    assert {"LA_exact", "LA_chance", "pairwise"}.isdisjoint(plain)


def test_outcome_reads_positions_and_chance_from_a_row() -> None:
    row = {
        "id": "1",
        "ground_truth": {"aligned": False, "words": ["red", "cat"], "positions": [1, 2]},
        "correct": True,
        "correct_exact": False,
        "pair": "7",
        "clip_score": 0.5,
        "f_clip_score": -0.01,
        "words": [{"word": w, "index": i, "score": 0.0} for i, w in enumerate(["a", "red", "cat"])],
    }
    outcome = Outcome.from_row(row)
    assert (outcome.exact, outcome.pair, outcome.chance) == (False, "7", 2 / 3)
    no_positions = {**row, "ground_truth": {"aligned": False, "words": ["cat"]}}
    assert Outcome.from_row(no_positions).chance == 1 / 3
    aligned = {**row, "ground_truth": {"aligned": True}}
    assert Outcome.from_row(aligned).chance is None


# -- choosing epsilon on hand-made rows -----------------------------------------------------------


def _scored(
    sample_id: str, caption: str, scores: list[float], cosine: float, truth: GroundTruth
) -> tuple[Sample, dict[str, Any]]:
    words = [
        WordScore(w, i, s) for i, (w, s) in enumerate(zip(caption.split(), scores, strict=True))
    ]
    detection = Detection(caption, words, [], 0.0, cosine, 2.5 * cosine, 0.0, "threshold")
    row = {"id": sample_id, "ground_truth": truth.to_dict(), **detection.to_dict()}
    return Sample(sample_id, "x.jpg", caption, truth), row


HALLUCINATED = GroundTruth(False, ("red",), positions=(1,))
SCORED = [
    _scored("1", "a red cat", [0.001, -0.003, -0.0005], 0.9, HALLUCINATED),
    _scored("2", "a blue dog", [0.0, -0.0015, 0.002], 0.0, GroundTruth(True)),
]


def test_choose_epsilon_best_la_then_ap_then_grid_order() -> None:
    hat = get_benchmark("hat")
    choice = choose_epsilon(SCORED, hat, (-1e-2, -1e-3, -1e-4, 0.0))
    # -1e-2: nothing selected; -1e-3: "red" alone (right); -1e-4 and 0: "red cat" (not contiguous
    # among the hallucinated words)
    assert [c["LA"] for c in choice.candidates] == [0.0, 1.0, 0.0, 0.0]
    assert choice.epsilon == -1e-3
    # same LA at -1e-3 and -2e-3, but at -1e-3 the aligned caption's "blue" is selected too and
    # its F-CLIPScore ranks it above the hallucinated one: the better AP wins, not grid order
    choice = choose_epsilon(SCORED, hat, (-1e-3, -2e-3))
    assert [c["AP_F-CLIPScore"] for c in choice.candidates] == [0.5, 1.0]
    assert choice.epsilon == -2e-3
    assert choice.validation["LA_exact"] == 1.0
    # full tie: the first in grid order
    assert choose_epsilon(SCORED, hat, (-2e-3, -2.5e-3)).epsilon == -2e-3
    entry = choice.to_dict()
    assert entry["grid"] == [-1e-3, -2e-3]
    assert entry["epsilon"] == -2e-3
    assert entry["validation"]["samples"] == 2
    outcome = rejudge(*SCORED[0], -1e-3, hat)
    assert outcome.f_clip_score == pytest.approx(-0.003 * (1 - 0.9))
    assert DEFAULT_EPSILON_GRID[0] == -1e-6
    assert DEFAULT_EPSILON_GRID[-1] == 0.0


# -- end to end on a tiny random CLIP --------------------------------------------------------------


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path)


def _hat_entries(offset: int) -> list[dict[str, Any]]:
    captions = [
        ("a red circle above a blue square", [3]),
        ("a green star left of a red cross", [1, 2]),
        ("two small dogs on a sofa", []),
        ("a cat sleeping on a warm laptop", [6]),
        ("a yellow bus in the rain", []),
        ("a man riding a purple horse", [4]),
    ]
    return [
        {
            "sample_id": f"s{offset + i}",
            "caption": caption,
            "grounding": [[w, k in bad] for k, w in enumerate(caption.split())],
            "contains_hallucination": bool(bad),
            "image_path": f"{i % 3}.png",
            "references": [],
        }
        for i, (caption, bad) in enumerate(captions)
    ]


@pytest.fixture
def hat_split(tmp_path: Path) -> tuple[Path, Path, Path]:
    images = tmp_path / "images"
    for i in range(3):
        _image(images / f"{i}.png", i)
    test = _write(tmp_path / "hat" / "test.json", _hat_entries(0))
    val = _write(tmp_path / "hat" / "val.json", _hat_entries(10)[::-1])
    return test, val, images


def _result(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return data


def test_choose_epsilon_on_validation_end_to_end(
    hat_split: tuple[Path, Path, Path], tiny_hf_dir: Path, tmp_path: Path
) -> None:
    test, val, images = hat_split
    out = tmp_path / "out"
    common = ["--images-root", str(images), "--model", f"hf:{tiny_hf_dir}", "--device", "cpu"]
    common += ["--no-references", "--quiet"]
    grid = "-1e-9,0,1"
    argv = ["hat", "--data", str(test), "--out", str(out), "--choose-epsilon-on", str(val)]
    assert eval_main([*argv, "--epsilon-grid", grid, *common]) == 0
    result = _result(out)
    selection = result["epsilon_selection"]
    assert selection["grid"] == [-1e-9, 0.0, 1.0]
    assert selection["data"] == str(val.resolve())
    assert selection["epsilon"] in selection["grid"]
    assert result["config"]["epsilon"] == selection["epsilon"]
    assert result["config"]["mode"] == "threshold"
    assert (out / "validation" / "samples.jsonl").is_file()
    # each candidate's figures equal a direct run over the validation data at that epsilon
    for candidate in selection["candidates"]:
        direct = tmp_path / f"direct{candidate['epsilon']}"
        argv = ["hat", "--data", str(val), "--out", str(direct)]
        assert eval_main([*argv, "--epsilon", str(candidate["epsilon"]), *common]) == 0
        metrics = _result(direct)["metrics"]
        assert candidate["LA"] == metrics["LA"], candidate
        assert candidate["AP_F-CLIPScore"] == metrics["AP"]["F-CLIPScore"], candidate
        if candidate["epsilon"] == selection["epsilon"]:
            assert selection["validation"] == metrics
    assert selection["validation"]["LA"] == max(c["LA"] for c in selection["candidates"])
    assert "LA_exact" in result["metrics"]
    assert "LA_chance" in result["metrics"]
    # a rerun resumes both runs (no row is computed again) and chooses the same epsilon
    rows = (out / "samples.jsonl").read_text(encoding="utf-8")
    again = ["hat", "--data", str(test), "--out", str(out), "--choose-epsilon-on", str(val)]
    assert clip4dm_main(["eval", *again, "--epsilon-grid", grid, *common]) == 0  # top-level CLI
    assert (out / "samples.jsonl").read_text(encoding="utf-8") == rows
    assert _result(out)["epsilon_selection"] == selection


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epsilon", "-1e-4"], "--epsilon and --choose-epsilon-on exclude each other"),
        (["--mode", "most_negative"], "add --mode threshold"),
        (["--same"], "names the evaluated data itself"),
        (["--missing"], "does not exist"),
    ],
)
def test_choose_epsilon_option_errors_are_one_line_and_write_nothing(
    hat_split: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    test, val, images = hat_split
    if extra == ["--same"]:
        val, extra = test, []
    elif extra == ["--missing"]:
        val, extra = tmp_path / "nope.json", []
    out = tmp_path / "out"
    argv = ["hat", "--data", str(test), "--images-root", str(images), "--out", str(out)]
    argv += ["--choose-epsilon-on", str(val), "--model", "hf:/not/used", "--quiet"]
    assert eval_main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    assert not out.exists()


def test_epsilon_grid_must_be_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["hat", "--data", "x", "--out", "y", "--epsilon-grid", "-1e-5,nan"])
    assert exit_info.value.code == 2
    assert "comma-separated numbers" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_gloo_run_chooses_the_same_epsilon(
    hat_split: tuple[Path, Path, Path], tiny_hf_dir: Path, tmp_path: Path
) -> None:
    """Under torchrun both runs (validation, then evaluation) share one process group; the rows,
    the choice and the metrics equal a single-process run's."""
    test, val, images = hat_split
    common = ["hat", "--data", str(test), "--images-root", str(images), "--choose-epsilon-on"]
    common += [str(val), "--epsilon-grid=-1e-9,0,1", "--model", f"hf:{tiny_hf_dir}"]
    common += ["--device", "cpu", "--batch-size", "2", "--no-references", "--quiet"]
    assert eval_main([*common, "--out", str(tmp_path / "single")]) == 0
    command = [sys.executable, "-m", "clip4dm.eval", *common, "--out", str(tmp_path / "sharded")]
    port = _free_port()
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    workers = [
        subprocess.Popen(
            command,
            env={**os.environ, **env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    for part in ("", "validation"):
        single, sharded = tmp_path / "single" / part, tmp_path / "sharded" / part
        rows = (single / "samples.jsonl").read_text(encoding="utf-8")
        assert (sharded / "samples.jsonl").read_text(encoding="utf-8") == rows
        one, two = _result(single), _result(sharded)
        assert two["metrics"] == one["metrics"]
        assert two["run"]["world_size"] == 2
    one, two = _result(tmp_path / "single"), _result(tmp_path / "sharded")
    assert two["epsilon_selection"] == one["epsilon_selection"]
