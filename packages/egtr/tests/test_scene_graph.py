"""SceneGraph: JSON, networkx, drawing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from egtr_testing import make_image

from egtr import Relation, SceneGraph, SceneObject, draw_scene_graph


def _graph() -> SceneGraph:
    objects = (
        SceneObject((10.0, 10.0, 50.0, 40.0), 0, "man", 0.9, query=3),
        SceneObject((30.0, 20.0, 70.0, 60.0), 1, "horse", 0.8, query=1),
    )
    relations = (Relation(0, 1, 2, "riding", 0.7), Relation(1, 0, 0, "near", 0.1))
    return SceneGraph(objects, relations, image_size=(80, 64))


def test_to_dict_is_json_and_round_trips() -> None:
    graph = _graph()
    data = json.loads(json.dumps(graph.to_dict()))
    assert data["relations"][0] == {
        "subject": 0,
        "object": 1,
        "predicate": 2,
        "predicate_name": "riding",
        "score": 0.7,
    }
    assert data["objects"][1]["box"] == [30.0, 20.0, 70.0, 60.0]
    assert SceneGraph.from_dict(data) == graph
    assert graph.triplets()[0] == ("man", "riding", "horse", 0.7)


def test_relations_must_point_at_objects() -> None:
    with pytest.raises(ValueError, match="outside"):
        SceneGraph((), (Relation(0, 1, 0, "on", 0.5),), image_size=(1, 1))


def test_to_networkx() -> None:
    nx_graph = _graph().to_networkx()
    assert nx_graph.number_of_nodes() == 2
    assert nx_graph.nodes[0]["label"] == "man"
    edges = sorted((u, v, d["predicate"]) for u, v, d in nx_graph.edges(data=True))
    assert edges == [(0, 1, "riding"), (1, 0, "near")]


def test_draw_scene_graph_writes_one_png(tmp_path: Path) -> None:
    out = draw_scene_graph(make_image(80, 64), _graph(), tmp_path / "sub" / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out) as img:
        assert img.width > img.height  # image and graph side by side


def test_draw_empty_graph(tmp_path: Path) -> None:
    empty = SceneGraph((), (), image_size=(80, 64))
    assert draw_scene_graph(make_image(80, 64), empty, tmp_path / "e.png").is_file()


def test_parts_round_trip_and_a_result_row_reads_back() -> None:
    graph = _graph()
    for obj in graph.objects:
        assert SceneObject.from_dict(json.loads(json.dumps(obj.to_dict()))) == obj
    for rel in graph.relations:
        assert Relation.from_dict(json.loads(json.dumps(rel.to_dict()))) == rel
    row = {"id": "a.png", "image": "a.png", **graph.to_dict(), "drawing": "d/a.graph.png"}
    assert SceneGraph.from_dict(row) == graph
    with pytest.raises(KeyError, match="relations"):
        SceneGraph.from_dict({"image_size": [1, 1], "objects": []})


def test_optional_dependencies_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from vl_core.cli import MissingExtraError

    monkeypatch.setitem(sys.modules, "networkx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'egtr\[viz\]'"):
        _graph().to_networkx()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingExtraError, match=r"matplotlib.*egtr\[viz\]"):
        draw_scene_graph(make_image(8, 8), _graph(), tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_drawings_are_marked_as_egtr_drawings(tmp_path: Path) -> None:
    from egtr.drawing import is_drawing

    drawn = draw_scene_graph(make_image(80, 64), _graph(), tmp_path / "g.png")
    assert is_drawing(drawn)
    make_image(8, 8).save(tmp_path / "photo.png")
    assert not is_drawing(tmp_path / "photo.png")
    (tmp_path / "notes.png").write_text("not an image")
    assert not is_drawing(tmp_path / "notes.png")
    assert not is_drawing(tmp_path / "missing.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "notes.png", "photo.png"]
