"""EGTRPredictor and preprocessing: batching, pixel coordinates, inputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from egtr_testing import make_image

from egtr import EGTRForSceneGraphGeneration, EGTRPredictor, SceneGraph
from egtr.preprocessing import preprocess, resized_size
from vl_core.images import ImageLoadError


def test_resized_size_follows_detr_rule() -> None:
    assert resized_size(640, 480) == (1067, 800)
    assert resized_size(480, 640) == (800, 1067)
    assert resized_size(2000, 500) == (1333, 333)  # longer side capped
    assert resized_size(800, 800) == (800, 800)
    with pytest.raises(ValueError, match="positive"):
        resized_size(0, 10)


def test_preprocess_pads_bottom_right_with_mask() -> None:
    batch = preprocess([make_image(80, 64), make_image(64, 96)], min_size=64, max_size=96)
    assert batch.pixel_values.shape == (2, 3, 96, 80)
    assert batch.original_sizes == ((80, 64), (64, 96))
    assert batch.pixel_mask[0, :64, :80].all()
    assert not batch.pixel_mask[0, 64:].any()
    assert batch.pixel_mask[1, :96, :64].all()
    assert not batch.pixel_mask[1, :, 64:].any()
    assert torch.all(batch.pixel_values[0, :, 64:] == 0)
    # normalised: a mid-grey image maps to (0.5 - mean) / std
    grey = preprocess([make_image(8, 8).point(lambda _: 128)], min_size=8, max_size=8)
    expected = (128 / 255 - 0.485) / 0.229
    assert grey.pixel_values[0, 0, 3, 3].item() == pytest.approx(expected, abs=1e-4)


def _assert_graphs_close(a: SceneGraph, b: SceneGraph) -> None:
    assert a.image_size == b.image_size
    assert [(o.query, o.label) for o in a.objects] == [(o.query, o.label) for o in b.objects]
    assert [(r.subject, r.object, r.predicate) for r in a.relations] == [
        (r.subject, r.object, r.predicate) for r in b.relations
    ]
    np.testing.assert_allclose([o.box for o in a.objects], [o.box for o in b.objects], atol=1e-3)
    np.testing.assert_allclose(
        [r.score for r in a.relations], [r.score for r in b.relations], atol=1e-5
    )


def test_batched_predictions_equal_one_by_one(tiny_model: EGTRForSceneGraphGeneration) -> None:
    predictor = EGTRPredictor(tiny_model, device="cpu", top_k=10)
    images = [make_image(120, 90, 1), make_image(70, 100, 2), make_image(120, 90, 3)]
    batched = predictor.predict(images, batch_size=3)
    single = [predictor.predict(image)[0] for image in images]
    assert len(batched) == 3
    for a, b in zip(batched, single, strict=True):
        _assert_graphs_close(a, b)
    assert len(batched[0].relations) == 10


def test_padded_batches_keep_pixel_coordinates(tiny_model: EGTRForSceneGraphGeneration) -> None:
    predictor = EGTRPredictor(tiny_model, device="cpu", top_k=5, pad_batches=True)
    images = [make_image(120, 90, 1), make_image(60, 100, 2)]
    graphs = predictor.predict(images, batch_size=2)
    for graph, image in zip(graphs, images, strict=True):
        assert graph.image_size == image.size
        # boxes are cxcywh in [0, 1] scaled by the ORIGINAL size: centres lie inside the image
        for obj in graph.objects:
            cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
            assert 0 <= cx <= image.width
            assert 0 <= cy <= image.height


def test_boxes_are_scaled_to_each_original_image(tiny_model: EGTRForSceneGraphGeneration) -> None:
    predictor = EGTRPredictor(tiny_model, device="cpu", top_k=5)
    small, large = make_image(60, 45, 4), make_image(240, 180, 4)
    # same content at 4x the size gives the same resized input, so boxes scale by exactly 4
    large = small.resize((240, 180))
    g_small, g_large = predictor.predict([small, large], batch_size=2)
    inputs = preprocess([small, large], min_size=64, max_size=96)
    assert inputs.pixel_values.shape[-2:] == (64, 85)
    # compared query by query: near-tied scores may order the two graphs' objects differently
    large = sorted(g_large.objects, key=lambda o: o.query)
    small = sorted(g_small.objects, key=lambda o: o.query)
    assert [o.query for o in large] == [o.query for o in small]
    np.testing.assert_allclose(
        np.array([o.box for o in large]),
        4 * np.array([o.box for o in small]),
        rtol=0.05,
        atol=2.0,
    )


def test_accepts_paths_arrays_and_directories(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    make_image(90, 70, 5).save(path)
    predictor = EGTRPredictor(tiny_model_dir, device="cpu", top_k=3)
    from_path = predictor.predict(str(path))[0]
    from_array = predictor.predict([np.asarray(make_image(90, 70, 5))])[0]
    _assert_graphs_close(from_path, from_array)
    assert from_path.objects[0].label_name in {"cat", "dog", "table"}


def test_clear_errors(tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path) -> None:
    predictor = EGTRPredictor(tiny_model, device="cpu")
    with pytest.raises(ImageLoadError, match=r"missing\.jpg"):
        predictor.predict(str(tmp_path / "missing.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match=r"corrupt\.jpg"):
        predictor.predict(str(corrupt))
    with pytest.raises(FileNotFoundError, match="not an EGTR model directory"):
        EGTRPredictor(tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict(make_image(10, 10), batch_size=0)


def test_object_threshold_lists_standalone_objects(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    image = make_image(90, 70, 6)
    only_relations = EGTRPredictor(tiny_model, device="cpu", top_k=1, object_threshold=None)
    (graph,) = only_relations.predict(image)
    assert len(graph.objects) == 2  # subject and object of the one kept relation
    # a softmax over 3 classes peaks at >= 1/3, so every query passes a 0.3 threshold
    (full,) = EGTRPredictor(tiny_model, device="cpu", top_k=1).predict(image)
    assert len(full.objects) == tiny_model.config.num_queries
    assert sorted(o.query for o in full.objects) == list(range(tiny_model.config.num_queries))
    scores = [o.score for o in full.objects]
    assert scores == sorted(scores, reverse=True)
    # the relation is the same one, re-indexed into the longer object list
    (a,), (b,) = graph.relations, full.relations
    assert (a.predicate, a.score) == (b.predicate, b.score)
    assert graph.objects[a.subject].query == full.objects[b.subject].query
    assert graph.objects[a.object].query == full.objects[b.object].query


def test_relation_threshold_keeps_the_relations_scoring_at_least_it(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    image = make_image(90, 70, 6)
    (full,) = EGTRPredictor(tiny_model, device="cpu", top_k=6, object_threshold=None).predict(image)
    assert len(full.relations) == 6
    threshold = full.relations[2].score  # inclusive: the third one is kept
    predictor = EGTRPredictor(
        tiny_model, device="cpu", top_k=6, object_threshold=None, relation_threshold=threshold
    )
    assert predictor.relation_threshold == threshold
    (graph,) = predictor.predict(image)
    kept = [r for r in full.relations if r.score >= threshold]
    assert 3 <= len(kept) < 6
    assert [(r.predicate, r.score) for r in graph.relations] == [
        (r.predicate, r.score) for r in kept
    ]
    for a, b in zip(graph.relations, kept, strict=True):
        assert graph.objects[a.subject] == full.objects[b.subject]
        assert graph.objects[a.object] == full.objects[b.object]
    used = {full.objects[i].query for r in kept for i in (r.subject, r.object)}
    assert sorted(o.query for o in graph.objects) == sorted(used)
    # None (the default) keeps every top-k relation
    assert EGTRPredictor(tiny_model, device="cpu").relation_threshold is None
    none = EGTRPredictor(
        tiny_model, device="cpu", top_k=6, object_threshold=None, relation_threshold=None
    )
    assert none.predict(image) == [full]


def test_model_dirs_with_wrong_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from egtr import egtr_visual_genome

    weights = load_file(tiny_model_dir / "model.safetensors")
    cases = {
        "missing": {k: v for k, v in weights.items() if k != "relation_head.gate.weight"},
        "shape": {**weights, "rel_dist": torch.ones(3)},
    }
    for name, state in cases.items():
        broken = tmp_path / name
        shutil.copytree(tiny_model_dir, broken)
        save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
        key = "relation_head.gate.weight" if name == "missing" else "rel_dist"
        with pytest.raises(ValueError, match=key):
            EGTRPredictor(broken, device="cpu")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(tiny_model_dir, unreadable)
    (unreadable / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read the EGTR model"):
        EGTRPredictor(unreadable, device="cpu")
    with pytest.raises(ValueError, match="cannot read the EGTR model"):
        egtr_visual_genome(weights=unreadable)


def test_many_wrong_keys_are_listed_first_few_then_a_count(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from egtr.builders import ModelDirectoryError

    weights = load_file(tiny_model_dir / "model.safetensors")
    dropped = sorted(k for k in weights if k.startswith("relation_head.proj_q."))
    assert len(dropped) == 4
    state = {k: v for k, v in weights.items() if k not in dropped}
    state.update({f"stray.{i}": torch.zeros(1) for i in range(7)})
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelDirectoryError) as exc:
        EGTRPredictor(broken, device="cpu")
    message = str(exc.value)
    assert f"missing 4: {', '.join(dropped)};" in message
    assert "unexpected 7: stray.0, stray.1, stray.2, stray.3, stray.4 and 2 more" in message
    assert "\n" not in message


def test_a_directory_of_another_kind_of_model_is_refused(tmp_path: Path) -> None:
    from egtr.builders import WrongModelKindError

    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(WrongModelKindError, match="'clip' model, not an EGTR model"):
        EGTRPredictor(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"config\.json, line 1 column 2"):
        EGTRPredictor(tmp_path, device="cpu")


def test_settings_are_checked(tiny_model: EGTRForSceneGraphGeneration) -> None:
    with pytest.raises(ValueError, match="top_k"):
        EGTRPredictor(tiny_model, device="cpu", top_k=-1)
    with pytest.raises(ValueError, match="object_score"):
        EGTRPredictor(tiny_model, device="cpu", object_score="argmax")
    with pytest.raises(ValueError, match="object_threshold"):
        EGTRPredictor(tiny_model, device="cpu", object_threshold=1.5)
    for threshold in (-0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"relation_threshold must be in \[0, 1\] or None"):
            EGTRPredictor(tiny_model, device="cpu", relation_threshold=threshold)
    assert EGTRPredictor(tiny_model, device="cpu").predict_loaded([]) == []


def test_one_mean_and_std_for_config_and_preprocessing() -> None:
    from egtr_testing import tiny_config

    from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    config = tiny_config()
    assert config.image_mean == list(IMAGENET_MEAN)
    assert config.image_std == list(IMAGENET_STD)
