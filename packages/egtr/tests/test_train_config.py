"""Training configuration (defaults, shipped files, overrides, errors) and learning-rate groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from egtr_testing import tiny_config

from egtr import EGTRForSceneGraphGeneration
from egtr.training import (
    ConfigError,
    PhaseSchedule,
    build_optimizer,
    default_config,
    load_config,
    parameter_group,
    parameter_groups,
    save_config,
    shipped_configs,
)


def test_paper_defaults() -> None:
    b = default_config("vg", "egtr")
    assert (b.train.lr, b.train.lr_backbone, b.train.lr_new) == (2e-6, 2e-7, 2e-4)
    assert (b.train.weight_decay, b.train.grad_clip, b.train.effective_batch) == (1e-4, 0.1, 64)
    assert (b.train.epochs, b.train.continuation_epochs, b.train.continuation_lr_factor) == (
        50,
        25,
        0.1,
    )
    assert (b.loss.ce, b.loss.bbox, b.loss.giou, b.loss.rel, b.loss.connectivity) == (
        2,
        5,
        2,
        15,
        30,
    )
    assert (b.matcher.class_cost, b.matcher.bbox_cost, b.matcher.giou_cost) == (2, 5, 2)
    assert (b.loss.focal_alpha, b.loss.focal_gamma, b.loss.smoothing_alpha) == (0.25, 2, 1e-14)
    assert (b.loss.rel_negatives_ratio, b.loss.rel_nonmatching_ratio) == (80, 80)
    assert b.loss.rel_nonmatching_largest
    assert not b.loss.auxiliary
    assert b.data.train_scales == list(range(480, 801, 32))
    assert b.data.max_size == 1333
    oi = default_config("oi", "B")
    assert oi.loss.connectivity == 90
    assert not oi.loss.rel_nonmatching_largest
    a = default_config("vg", "A")
    assert a.stage == "detector"
    assert a.loss.auxiliary
    assert (a.train.lr, a.train.lr_backbone, a.train.effective_batch) == (1e-4, 1e-5, 32)
    assert (a.train.epochs, a.train.continuation_epochs) == (150, 50)


@pytest.mark.parametrize("name", ["vg_detector", "vg_egtr", "oi_detector", "oi_egtr"])
def test_shipped_configs_spell_out_the_defaults(name: str) -> None:
    path = shipped_configs()[name]
    dataset, stage = name.split("_")
    assert load_config(path) == default_config(dataset, stage)
    assert load_config(name) == load_config(path)  # by name
    import yaml

    raw = yaml.safe_load(path.read_text())
    expected = default_config(dataset, stage).to_dict()
    assert raw == expected  # every value written out, nothing left to the defaults


def test_files_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("stage: egtr\ndata: {dataset: oi}\ntrain: {lr: 1e-5, epochs: 3}\n")
    config = load_config(
        cfg_file,
        [
            "train.lr_new=3e-4",
            "loss.rel_nonmatching_ratio=null",
            "data.train_scales=[64, 96]",
            "model.overrides.num_queries=7",
        ],
    )
    assert config.data.dataset == "oi"
    assert config.loss.connectivity == 90
    assert config.train.lr == 1e-5
    assert isinstance(config.train.lr, float)
    assert config.train.epochs == 3
    assert config.train.lr_new == 3e-4
    assert config.loss.rel_nonmatching_ratio is None
    assert config.data.train_scales == [64, 96]
    assert config.model.overrides == {"num_queries": 7}
    switched = load_config(cfg_file, ["stage=A"])  # the stage override picks stage-A defaults
    assert switched.stage == "detector"
    assert switched.loss.auxiliary
    assert switched.train.epochs == 3
    for suffix in (".yaml", ".json"):
        saved = save_config(config, tmp_path / f"saved{suffix}")
        assert load_config(saved) == config
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"stage": "detector", "train": {"batch_size": 2}}))
    assert load_config(as_json).train.batch_size == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown configuration key 'train.lrr'"),
        ("train.epochs=1.5", "train.epochs must be an integer"),
        ("train.progress=maybe", "train.progress must be true or false"),
        ("train.effective_batch=10", "multiple of train.batch_size"),
        ("stage=C", "unknown stage"),
        ("data.dataset=coco", "data.dataset must be one of"),
        ("train.amp=fp8", "train.amp must be one of"),
        ("train", "section.key=value"),
    ],
)
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        load_config("no-such-config")


def test_parameter_group_rules() -> None:
    config = default_config("vg", "egtr").train
    rules = (config.backbone_patterns, config.new_patterns)
    assert parameter_group("model.backbone.model.layer2.0.conv1.weight", *rules) == "backbone"
    name = "model.encoder.layers.3.self_attn.sampling_offsets.bias"
    assert parameter_group(name, *rules) == "backbone"
    assert (
        parameter_group("model.decoder.layers.0.encoder_attn.sampling_offsets.weight", *rules)
        == "backbone"
    )
    assert parameter_group("model.reference_points.weight", *rules) == "backbone"
    assert parameter_group("relation_head.rel_mlp.layers.0.weight", *rules) == "new"
    for detector in (
        "model.decoder.layers.0.self_attn.q_proj.weight",
        "class_embed.bias",
        "bbox_embed.layers.2.weight",
        "model.input_proj.0.0.weight",
        "model.level_embed",
        "model.query_position_embeddings.weight",
    ):
        assert parameter_group(detector, *rules) == "detector"


def test_learning_rate_groups_of_the_model() -> None:
    model = EGTRForSceneGraphGeneration(tiny_config())
    model.model.backbone.model.encoder.stages[3].requires_grad_(True)  # like timm layer2-4
    config = default_config("vg", "egtr").train
    groups = {g["name"]: g for g in parameter_groups(model, config)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set().union(*members.values()) == trainable  # every trainable parameter, once
    assert sum(len(m) for m in members.values()) == len(trainable)
    assert all(n.startswith("relation_head.") for n in members["new"])
    assert len(members["new"]) == len(list(model.relation_head.parameters()))
    assert all(
        n.startswith("model.backbone.") or "sampling_offsets" in n or "reference_points" in n
        for n in members["backbone"]
    )
    assert any(n.startswith("model.backbone.") for n in members["backbone"])
    assert {g["name"]: g["lr"] for g in groups.values()} == {
        "detector": 2e-6,
        "backbone": 2e-7,
        "new": 2e-4,
    }
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    schedule = PhaseSchedule(optimizer, 0.1)
    assert schedule.learning_rates() == pytest.approx(
        {"detector": 2e-7, "backbone": 2e-8, "new": 2e-5}
    )
    # stage A: the relation head is frozen, so it has no group
    model.relation_head.requires_grad_(False)
    stage_a = default_config("vg", "detector").train
    groups_a = {g["name"]: g["lr"] for g in parameter_groups(model, stage_a)}
    assert groups_a == {"detector": 1e-4, "backbone": 1e-5}


def test_set_below_a_mapping_changes_one_entry() -> None:
    """``--set model.overrides.KEY=...`` keeps the file's other overrides (nested too)."""
    source = {
        "model": {
            "overrides": {
                "num_queries": 20,
                "d_model": 96,
                "backbone_config": {"depths": [1, 1], "layer_type": "basic"},
            }
        }
    }
    config = load_config(
        source,
        [
            "model.overrides.num_queries=7",
            "model.overrides.backbone_config.depths=[2, 2]",
        ],
    )
    assert config.model.overrides == {
        "num_queries": 7,
        "d_model": 96,
        "backbone_config": {"depths": [2, 2], "layer_type": "basic"},
    }
    created = load_config(  # a missing level is created
        {"model": {"overrides": {"num_queries": 20}}},
        ["model.overrides.backbone_config.depths=[2, 2]"],
    )
    assert created.model.overrides == {"num_queries": 20, "backbone_config": {"depths": [2, 2]}}
    assert source["model"]["overrides"]["num_queries"] == 20  # the caller's dict is untouched
    replaced = load_config(source, ["model.overrides={num_queries: 5}"])  # a whole mapping
    assert replaced.model.overrides == {"num_queries": 5}
    with pytest.raises(ValueError, match=r"unknown configuration key 'model\.overide'"):
        load_config(source, ["model.overide.x=1"])


@pytest.mark.parametrize(
    ("override", "unknown", "suggestion"),
    [
        ("model.overrides.num_querys=50", "model.overrides.num_querys", "num_queries"),
        (
            "model.overrides.backbone_config={model_type: resnet, depth: [1, 1]}",
            "model.overrides.backbone_config.depth",
            "model.overrides.backbone_config.depths",
        ),
        ("train.lrr=1", "train.lrr", "train.lr"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_key(
    override: str, unknown: str, suggestion: str
) -> None:
    """A misspelt key is an error naming it and the close match, not silently the default
    (``model.overrides.num_querys=50`` used to train with 200 queries)."""
    with pytest.raises(ConfigError) as caught:
        load_config("vg_egtr", [override])
    message = str(caught.value)
    assert f"unknown configuration key {unknown!r}" in message
    assert "did you mean" in message
    assert suggestion in message
    assert "\n" not in message
    valid = load_config("vg_egtr", ["model.overrides.num_queries=50"])
    assert valid.model.overrides == {"num_queries": 50}


def test_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("stage: egtr\ntrain:\n  lr: 1e-5\n epochs: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad_yaml)
    assert str(caught.value).startswith(f"{bad_yaml}, line 4, column 2: invalid YAML")
    assert "\n" not in str(caught.value)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"stage": "egtr",\n "train": {lr: 1}}')
    with pytest.raises(ConfigError, match=r"bad\.json, line 2, column 12: invalid JSON"):
        load_config(bad_json)
    with pytest.raises(ConfigError, match=r"--set train\.epochs=\[1: the value is not valid YAML"):
        load_config("vg_egtr", ["train.epochs=[1"])
    wrong_key = tmp_path / "key.yaml"
    wrong_key.write_text("train: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"key\.yaml: unknown configuration key 'train\.epoch'"):
        load_config(wrong_key)
