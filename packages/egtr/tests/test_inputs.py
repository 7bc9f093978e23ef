"""``egtr predict``'s inputs (files, folders, patterns, list files) and its parallel loading."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from egtr_testing import make_image

from egtr.inputs import ImageInput, InputError, default_workers, find_images, is_pattern
from egtr.loading import BlockImages, Preprocessing, load_blocks
from egtr.preprocessing import preprocess
from egtr.scene_graph import SceneGraph


def _tree(root: Path) -> Path:
    """photos/ with images in sub-folders, upper-case extensions, and files that are no images."""
    photos = root / "photos"
    for name in ("b.jpg", "a.PNG", "trip/c.jpeg", "trip/deep/d.webp", "a/z.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.jpg").write_bytes(b"x")  # e.g. macOS ._ files
    (photos / ".cache").mkdir()
    (photos / ".cache" / "e.jpg").write_bytes(b"x")
    (photos / "folder.jpg").mkdir()  # a folder with an image name is no image
    return photos


def test_a_folder_is_searched_recursively_for_images_sorted_with_relative_ids(
    tmp_path: Path,
) -> None:
    photos = _tree(tmp_path)
    found = find_images([str(photos)])
    assert [item.id for item in found] == [
        "a/z.png",
        "a.PNG",
        "b.jpg",
        "trip/c.jpeg",
        "trip/deep/d.webp",
    ]
    assert found[3] == ImageInput("trip/c.jpeg", str(photos / "trip" / "c.jpeg"), str(photos))
    # the same ids wherever the folder is found, e.g. after a move
    moved = tmp_path / "moved"
    photos.rename(moved)
    assert [item.id for item in find_images([str(moved) + "/"])] == [item.id for item in found]


def test_several_folders_keep_the_folder_in_the_id(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(b"x")
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    found = find_images([first, second])
    assert [item.id for item in found] == [f"{first}/x.jpg", f"{second}/x.jpg"]
    assert [item.path for item in found] == [item.id for item in found]


def test_files_keep_the_path_as_written_and_missing_files_are_kept(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("given by name: taken as it is")
    given = [str(tmp_path / "a.jpg"), str(tmp_path / "missing.png"), str(tmp_path / "readme.txt")]
    assert find_images(given) == [ImageInput(name, name) for name in given]


def test_patterns_are_expanded_to_images_sorted(tmp_path: Path) -> None:
    photos = _tree(tmp_path)
    found = find_images([str(photos / "**" / "*")])
    assert [Path(item.id).relative_to(photos).as_posix() for item in found] == [
        "a/z.png",
        "a.PNG",
        "b.jpg",
        "trip/c.jpeg",
        "trip/deep/d.webp",
    ]
    assert all(item.id == item.path and item.folder is None for item in found)
    assert [item.id for item in find_images([str(photos / "*.jpg")])] == [str(photos / "b.jpg")]
    # a file whose name looks like a pattern is that file
    odd = tmp_path / "odd[1].jpg"
    odd.write_bytes(b"x")
    assert not is_pattern(str(odd))
    assert find_images([str(odd)]) == [ImageInput(str(odd), str(odd))]


def test_a_list_file_gives_one_path_per_line(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("\ufeffa.jpg\r\n\n  sub/b.png  \nmissing.jpg\n", encoding="utf-8")
    found = find_images(["first.jpg"], str(listed))
    assert [item.id for item in found] == ["first.jpg", "a.jpg", "sub/b.png", "missing.jpg"]
    assert [item.id for item in find_images([], "-", stdin=io.StringIO("x.jpg\ny.jpg\n"))] == [
        "x.jpg",
        "y.jpg",
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: ([str(root / "empty")], None), "the folder holds no images"),
        (lambda root: ([str(root / "*.gif")], None), "the pattern matches no image"),
        (lambda root: ([], str(root / "nope.txt")), "the list file does not exist"),
        (lambda root: ([], str(root / "empty")), "cannot read the list file"),
        (lambda root: ([], str(root / "blank.txt")), "the list names no image"),
        (lambda root: ([], str(root / "latin1.txt")), "the list is not UTF-8 text"),
        (lambda root: ([], None), "no images given"),
    ],
)
def test_inputs_that_name_no_image_are_refused(tmp_path: Path, make: object, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.jpg\n".encode("latin-1"))
    arguments, list_file = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(InputError) as caught:
        find_images(arguments, list_file)
    assert str(caught.value).startswith(message)
    assert ": " in str(caught.value)  # what (where): how to fix


def test_an_image_reached_twice_is_predicted_once(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.jpg").write_bytes(b"x")
    found = find_images([str(photos / "x.jpg"), str(photos), str(photos / "x.jpg")])
    assert found == [ImageInput(str(photos / "x.jpg"), str(photos / "x.jpg"))]
    assert find_images([str(photos), str(photos)]) == [
        ImageInput("x.jpg", str(photos / "x.jpg"), str(photos))
    ]


def test_two_files_with_one_id_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.jpg").write_bytes(b"x")
    Path("x.jpg").write_bytes(b"y")
    with pytest.raises(InputError, match=r"two images have the id 'x\.jpg'"):
        find_images(["photos", "x.jpg"])


def test_default_workers_leave_a_cpu_to_the_model() -> None:
    assert [default_workers(cpus) for cpus in (1, 2, 3, 5, 16)] == [0, 1, 2, 4, 4]
    assert 0 <= default_workers() <= 4


# -- loading --------------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> list[str]:
    """Five images of two resized shapes, and a corrupt file in between."""
    paths = []
    for index, (width, height) in enumerate([(90, 70), (60, 80), (90, 70), (61, 81), (50, 30)]):
        path = tmp_path / f"{index}.png"
        make_image(width, height, index).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    paths.insert(2, str(broken))
    return paths


SETTINGS = Preprocessing(min_size=64, max_size=96)


def test_a_block_is_read_into_the_batches_of_its_shapes(mixed: list[str]) -> None:
    from PIL import Image

    block = BlockImages(mixed, [range(6)], SETTINGS, keep_images=True)[0]
    assert list(block.errors) == [2]
    assert "broken.jpg" in block.errors[2]
    assert [members for members, _ in block.batches] == [(0, 3), (1, 4), (5,)]
    for members, inputs in block.batches:
        images = [Image.open(mixed[p]).convert("RGB") for p in members]
        want = preprocess(images, min_size=64, max_size=96)
        assert torch.equal(inputs.pixel_values, want.pixel_values)
        assert torch.equal(inputs.pixel_mask, want.pixel_mask)
        assert inputs.original_sizes == want.original_sizes
    assert sorted(block.images) == [0, 1, 3, 4, 5]
    padded = BlockImages(mixed, [range(6)], Preprocessing(64, 96, pad_batches=True))[0]
    assert [members for members, _ in padded.batches] == [(0, 1, 3, 4, 5)]
    assert padded.images == {}


def test_workers_return_the_blocks_in_order(mixed: list[str]) -> None:
    blocks = [[0, 1], [2, 3], [4], [5]]
    here = list(load_blocks(mixed, blocks, SETTINGS, workers=0))
    there = list(load_blocks(mixed, blocks, SETTINGS, workers=2, prefetch=1))
    assert [block.index for block in there] == [0, 1, 2, 3]
    assert [block.errors for block in there] == [{}, {2: here[1].errors[2]}, {}, {}]
    for mine, theirs in zip(here, there, strict=True):
        assert [m for m, _ in mine.batches] == [m for m, _ in theirs.batches]
        for (_, a), (_, b) in zip(mine.batches, theirs.batches, strict=True):
            assert torch.equal(a.pixel_values, b.pixel_values)
    with pytest.raises(ValueError, match="workers"):
        next(load_blocks(mixed, blocks, SETTINGS, workers=-1))
    assert list(load_blocks(mixed, [], SETTINGS, workers=2)) == []


def _interrupting_open(*args: object, **kwargs: object) -> object:
    raise KeyboardInterrupt


def test_an_interrupted_worker_stops_the_run(
    mixed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", _interrupting_open)  # inherited by forked workers
    for workers in (0, 1):
        with pytest.raises(KeyboardInterrupt):
            list(load_blocks(mixed, [[0], [1]], SETTINGS, workers=workers))


def test_loaded_batches_give_the_graphs_of_predict(tiny_model_dir: Path, mixed: list[str]) -> None:
    from egtr.predictor import EGTRPredictor
    from vl_core.images import load_image

    predictor = EGTRPredictor(tiny_model_dir, device="cpu", top_k=5)
    good = [path for path in mixed if "broken" not in path]
    want = predictor.predict_loaded([load_image(path) for path in good])
    got: dict[int, SceneGraph] = {}
    for block in load_blocks(good, [range(len(good))], predictor.preprocessing, workers=1):
        for members, inputs in block.batches:
            got.update(zip(members, predictor.predict_inputs(inputs), strict=True))
    assert [got[i].to_dict() for i in range(len(good))] == [graph.to_dict() for graph in want]


def test_a_worker_process_reads_relative_paths_from_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_image(40, 30).save("rel.png")
    (block,) = load_blocks(["rel.png"], [[0]], SETTINGS, workers=1)
    assert block.errors == {}
    assert os.path.exists("rel.png")


@pytest.mark.gpu
def test_blocks_are_pinned_and_predicted_on_cuda(
    tiny_model_dir: Path, mixed: list[str], tmp_path: Path
) -> None:
    """On CUDA the workers' batches go through pinned memory, and ``egtr predict`` writes the
    rows it writes without workers."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from egtr.cli import main

    (block,) = load_blocks(mixed, [range(6)], SETTINGS, workers=1, pin_memory=True)
    assert all(inputs.pixel_values.is_pinned() for _, inputs in block.batches)
    folder = Path(mixed[0]).parent
    rows = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        argv = ["predict", str(folder), "--model", str(tiny_model_dir), "--device", "cuda"]
        argv += ["--workers", workers, "--batch-size", "2", "--out", str(out), "--quiet"]
        assert main(argv) == 1  # broken.jpg
        rows.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [r["id"] for r in rows[0]] == [r["id"] for r in rows[1]]
    assert [r.get("image_size") for r in rows[0]] == [r.get("image_size") for r in rows[1]]
    for mine, theirs in zip(rows[0], rows[1], strict=True):
        assert [o["label"] for o in mine.get("objects", [])] == [
            o["label"] for o in theirs.get("objects", [])
        ]
