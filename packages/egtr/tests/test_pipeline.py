"""``pipeline("scene-graph-generation")``: the same graphs as EGTRPredictor, as plain dicts."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from egtr_testing import make_image
from PIL import Image

from egtr import EGTRForSceneGraphGeneration, EGTRPredictor
from egtr.pipeline import TASK, SceneGraphPipeline


@pytest.fixture(scope="module")
def sgg(tiny_model_dir: Path) -> SceneGraphPipeline:
    from transformers import pipeline

    made = pipeline(TASK, model=str(tiny_model_dir), device="cpu")
    assert isinstance(made, SceneGraphPipeline)
    return made


def _images() -> list[Image.Image]:
    # two resized shapes: the 120x90 images share a forward, the 70x100 one runs alone
    return [make_image(120, 90, 1), make_image(70, 100, 2), make_image(120, 90, 3)]


def test_the_task_is_registered() -> None:
    from transformers.pipelines import PIPELINE_REGISTRY

    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_the_pipeline_gives_the_predictors_graphs(
    sgg: SceneGraphPipeline, tiny_model_dir: Path, batch_size: int
) -> None:
    images = _images()
    predictor = EGTRPredictor(tiny_model_dir, device="cpu", top_k=4)
    expected = [graph.to_dict() for graph in predictor.predict(images, batch_size=batch_size)]
    got = sgg(images, batch_size=batch_size, top_k=4)
    assert got == expected
    assert all(len(graph["relations"]) == 4 for graph in got)
    relation = got[0]["relations"][0]
    assert set(relation) == {"subject", "object", "predicate", "predicate_name", "score"}
    subject = got[0]["objects"][relation["subject"]]
    assert subject["label_name"] in {"cat", "dog", "table"}
    x1, y1, x2, y2 = subject["box"]  # pixels of the original image
    assert got[0]["image_size"] == [120, 90]
    assert x1 <= x2
    assert y1 <= y2


def test_one_image_gives_one_dict_and_settings_apply(
    sgg: SceneGraphPipeline, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "photo.png"
    make_image(90, 70, 5).save(path)
    predictor = EGTRPredictor(
        tiny_model_dir, device="cpu", top_k=1, graph_constrained=False, object_threshold=None
    )
    (expected,) = predictor.predict(str(path))
    got = sgg(str(path), top_k=1, graph_constrained=False, object_threshold=None)
    assert got == expected.to_dict()
    assert len(got["objects"]) <= 2  # only the objects of the one relation
    assert sgg(Image.open(path)) == sgg(str(path))  # a PIL image or a path: the same
    # the model config's defaults otherwise (top_k 100, threshold 0.3)
    default = EGTRPredictor(tiny_model_dir, device="cpu").predict(str(path))[0].to_dict()
    assert sgg(str(path)) == default


def test_relation_threshold_is_a_postprocess_keyword(
    sgg: SceneGraphPipeline, tiny_model_dir: Path
) -> None:
    image = make_image(90, 70, 5)
    full = sgg(image, top_k=5)
    threshold = full["relations"][1]["score"]
    predictor = EGTRPredictor(tiny_model_dir, device="cpu", top_k=5, relation_threshold=threshold)
    got = sgg(image, top_k=5, relation_threshold=threshold)
    assert got == predictor.predict(image)[0].to_dict()
    assert [r["score"] for r in got["relations"]] == [
        r["score"] for r in full["relations"] if r["score"] >= threshold
    ]
    assert 2 <= len(got["relations"]) < 5
    assert sgg(image, top_k=5, relation_threshold=None) == full


def test_a_model_object_may_be_given(tiny_model: EGTRForSceneGraphGeneration) -> None:
    from transformers import pipeline

    made = pipeline(TASK, model=tiny_model, device="cpu", top_k=2)
    image = make_image(64, 64, 7)
    expected = EGTRPredictor(tiny_model, device="cpu", top_k=2).predict(image)[0].to_dict()
    assert made(image) == expected


@pytest.fixture
def served_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """``(url, path)`` of a PNG served by a thread on 127.0.0.1 (never a real network)."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    path = tmp_path / "served.png"
    make_image(80, 60, 9).save(path)
    body = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/photo.png", path
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_gives_the_graph_of_its_image(
    sgg: SceneGraphPipeline, served_png: tuple[str, Path]
) -> None:
    url, path = served_png
    assert sgg(url, timeout=10) == sgg(str(path))


def test_a_model_directory_is_opened_strictly(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import pipeline

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["relation_head.gate.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing 1: relation_head\.gate\.weight"):
        pipeline(TASK, model=str(broken), device="cpu")


def test_mistakes_are_refused(sgg: SceneGraphPipeline) -> None:
    from transformers import pipeline

    from vl_core.images import ImageLoadError

    image = make_image(40, 40)
    with pytest.raises(TypeError, match=r"unknown keyword.*threshold"):
        sgg(image, threshold=0.5)
    with pytest.raises(ValueError, match="top_k"):
        sgg(image, top_k=-1)
    with pytest.raises(ValueError, match="object_score"):
        sgg(image, object_score="argmax")
    with pytest.raises(ValueError, match="object_threshold"):
        sgg(image, object_threshold=2.0)
    with pytest.raises(ValueError, match=r"relation_threshold must be in \[0, 1\] or None"):
        sgg(image, relation_threshold=2.0)
    with pytest.raises(ValueError, match="relation_threshold"):
        sgg(image, relation_threshold=-0.1)
    with pytest.raises(ImageLoadError, match=r"missing\.png"):
        sgg("missing.png")
    import transformers
    from packaging.version import Version

    # transformers < 5.18 reads `model.config` itself before the pipeline can refuse the model
    old = Version(transformers.__version__) < Version("5.18")
    with pytest.raises(
        AttributeError if old else ValueError, match="config" if old else "needs an EGTR model"
    ):
        pipeline(TASK, model=torch.nn.Linear(2, 2), device="cpu")
