"""Import of the authors' released Lightning checkpoints (transformers 4.18 naming)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from egtr_testing import legacy_names, save_lightning, tiny_config

from egtr import EGTRForSceneGraphGeneration, convert_checkpoint
from egtr.builders import JSONFileError, WrongModelKindError, load_pretrained
from egtr.convert import LEGACY_RENAME_RULES, legacy_config, read_categories
from vl_core.checkpoints import CheckpointMismatchError, UnsafeCheckpointError
from vl_core.files import OutputExistsError

TSV = Path(__file__).parent / "data" / "egtr-vg-checkpoint-keys.tsv"
"""The released VG checkpoint's keys and shapes (tests/data/README.md), part of the repository."""

# transformers-4.18 config.json of the released VG run, reduced to what matters (hand-written)
LEGACY_VG_CONFIG = {
    "architectures": ["DetrForSceneGraphGeneration"],
    "model_type": "deformable_detr",
    "transformers_version": "4.18.0",
    "backbone": "resnet50",
    "use_pretrained_backbone": True,
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "num_feature_levels": 4,
    "num_queries": 200,
    "two_stage": False,
    "with_box_refine": False,
    "auxiliary_loss": True,
    "id2label": {str(i): f"LABEL_{i}" for i in range(150)},
    "label2id": {f"LABEL_{i}": i for i in range(150)},
    "num_rel_labels": 50,
    "use_freq_bias": True,
    "use_log_softmax": False,
    "freq_bias_eps": 1e-12,
    "logit_adjustment": False,
    "logit_adj_tau": 0.3,
    "rel_loss_coefficient": 15.0,
    "connectivity_loss_coefficient": 30.0,
    "smoothing": 1e-14,
}


def _released_state_dict() -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
    """Random tensors under exactly the released VG keys and shapes (shared heads shared)."""
    with TSV.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 633
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for row in rows:
        shape = json.loads(row["shape"])
        if row["dtype"] == "int64":
            state[row["name"]] = torch.tensor(1234, dtype=torch.int64).expand(shape).clone()
        else:
            state[row["name"]] = torch.randn(shape, generator=gen)
    for row in rows:
        if row["same_tensor_as"]:
            state[row["name"]] = state[row["same_tensor_as"]]
    return state, rows


def test_released_vg_checkpoint_converts_and_loads_strictly(tmp_path: Path) -> None:
    state, rows = _released_state_dict()
    ckpt = save_lightning(state, tmp_path / "epoch=03-validation_loss=1.23.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(LEGACY_VG_CONFIG))
    report = convert_checkpoint(ckpt, tmp_path / "config.json", tmp_path / "out")
    assert len(report.ignored_keys) == 4
    assert all(k.endswith("downsample.1.num_batches_tracked") for k in report.ignored_keys)

    model = load_pretrained(tmp_path / "out")  # strict: every key present, none unexpected
    ours = model.state_dict()
    # strict: the saved directory holds exactly the model's keys
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(ours)
    # every released key maps to the name the TSV gives for current transformers
    for row in rows:
        target = row["hf524_DeformableDetrForObjectDetection_name"]
        if row["name"].startswith("model.") and target:
            torch.testing.assert_close(ours[target], state[row["name"]])
    torch.testing.assert_close(ours["triplet_dist"], state["triplet_dist"])
    torch.testing.assert_close(ours["rel_dist"], state["rel_dist"])
    torch.testing.assert_close(ours["class_embed.weight"], state["class_embed.0.weight"])
    torch.testing.assert_close(
        ours["bbox_embed.layers.2.bias"], state["bbox_embed.0.layers.2.bias"]
    )
    torch.testing.assert_close(
        ours["relation_head.gate.weight"], state["rel_predictor_gate.weight"]
    )
    torch.testing.assert_close(
        ours["model.decoder.layers.5.self_attn.o_proj.weight"],
        state["model.decoder.layers.5.self_attn.out_proj.weight"],
    )
    assert model.config.object_labels[:2] == ["airplane", "animal"]
    assert model.config.predicate_labels[30] == "on"
    assert model.config.num_queries == 200


def test_converted_tiny_checkpoint_gives_same_outputs(
    tiny_model: EGTRForSceneGraphGeneration, tiny_model_dir: Path, tmp_path: Path
) -> None:
    legacy = legacy_names(tiny_model.state_dict(), decoder_layers=2)
    assert "rel_predictor.layers.0.weight" in legacy
    assert "class_embed.1.bias" in legacy
    ckpt = save_lightning(legacy, tmp_path / "tiny.ckpt")
    convert_checkpoint(ckpt, tiny_config(), tmp_path / "out")
    converted = load_pretrained(tmp_path / "out")
    # the same weights loaded directly (save_pretrained of the original model)
    direct = load_pretrained(tiny_model_dir)
    ours, theirs = converted.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    pixels = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a, b, c = direct(pixels), converted(pixels), tiny_model(pixels)
    for name in ("logits", "pred_boxes", "pred_rel", "pred_connectivity"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
        # the in-memory original: equal up to float rounding (MKL's summation order can depend
        # on the weights' memory alignment, which differs for memory-mapped safetensors)
        torch.testing.assert_close(getattr(c, name), getattr(b, name), rtol=1e-4, atol=1e-5)


def test_missing_and_unexpected_keys_fail_with_a_list(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    legacy = legacy_names(tiny_model.state_dict(), decoder_layers=2)
    missing = dict(legacy)
    del missing["final_sub_proj.bias"]
    with pytest.raises(
        CheckpointMismatchError, match=r"relation_head\.final_sub_proj\.bias"
    ) as exc:
        convert_checkpoint(
            save_lightning(missing, tmp_path / "m.ckpt"), tiny_config(), tmp_path / "o1"
        )
    assert exc.value.report.missing_keys == ("relation_head.final_sub_proj.bias",)
    assert not (tmp_path / "o1").exists()

    extra = dict(legacy)
    extra["rel_predictor.layers.3.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointMismatchError, match=r"rel_mlp\.layers\.3\.weight") as exc:
        convert_checkpoint(
            save_lightning(extra, tmp_path / "e.ckpt"), tiny_config(), tmp_path / "o2"
        )
    assert exc.value.report.unexpected_keys == ("relation_head.rel_mlp.layers.3.weight",)


def test_checkpoint_of_another_model_fails_with_the_shapes(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    # a released checkpoint converted with the wrong config (3 predicates instead of 4)
    ckpt = save_lightning(legacy_names(tiny_model.state_dict(), 2), tmp_path / "w.ckpt")
    wrong = tiny_config(num_rel_labels=3, rel_labels=["on", "near", "has"])
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as exc:
        convert_checkpoint(ckpt, wrong, tmp_path / "o")
    mismatched = {key: (got, want) for key, got, want in exc.value.report.shape_mismatches}
    assert mismatched["triplet_dist"] == ((4, 4, 4), (4, 4, 3))
    assert mismatched["relation_head.rel_mlp.layers.2.weight"] == ((4, 64), (3, 64))
    assert not (tmp_path / "o").exists()


def test_differing_per_layer_heads_are_refused(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    legacy = legacy_names(tiny_model.state_dict(), decoder_layers=2)
    legacy["class_embed.1.bias"] = legacy["class_embed.1.bias"] + 1
    with pytest.raises(ValueError, match="box-refinement"):
        convert_checkpoint(
            save_lightning(legacy, tmp_path / "r.ckpt"), tiny_config(), tmp_path / "o"
        )


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled code ran",))


def test_converter_never_unpickles_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": _Payload()}, ckpt)
    with pytest.raises(UnsafeCheckpointError):
        convert_checkpoint(ckpt, tiny_config(), tmp_path / "out")
    assert "unpickled code ran" not in capsys.readouterr().out


def test_legacy_config_mapping() -> None:
    config = legacy_config(LEGACY_VG_CONFIG)
    assert (config.d_model, config.num_queries, config.decoder_layers) == (256, 200, 6)
    assert config.backbone_config.backbone == "resnet50"
    assert config.backbone_config.use_pretrained_backbone is False
    assert config.use_logit_adjustment is False
    assert config.logit_adjustment_tau == 0.3
    named = legacy_config(
        {
            **LEGACY_VG_CONFIG,
            "num_labels": 3,
            "id2label": {"0": "a", "1": "b", "2": "c"},
            "num_rel_labels": 2,
        }
    )
    assert named.object_labels == ["a", "b", "c"]
    assert named.predicate_labels == ["predicate_0", "predicate_1"]
    with pytest.raises(ValueError, match="timm"):
        legacy_config({**LEGACY_VG_CONFIG, "use_timm_backbone": False})


def test_rename_rules_cover_only_known_prefixes() -> None:
    # each rule must be used by at least one released key, so none is dead
    state, _ = _released_state_dict()
    for rule in LEGACY_RENAME_RULES:
        assert any(rule.apply(k) != k for k in state), rule.pattern


def test_the_output_directory_is_new_or_empty_and_never_an_input(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    ckpt = save_lightning(legacy_names(tiny_model.state_dict(), 2), tmp_path / "t.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    convert_checkpoint(ckpt, tiny_config(), out)  # an empty directory is fine
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(written) == {"config.json", "model.safetensors", "README.md"}
    with pytest.raises(OutputExistsError, match="not empty"):
        convert_checkpoint(ckpt, tiny_config(), out)
    convert_checkpoint(ckpt, tiny_config(), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written  # same conversion
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    # the run's own config.json in the output directory would be replaced: refused even with
    # --overwrite, before anything is read
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"num_labels": 3, "num_rel_labels": 4}')
    before = (run / "config.json").read_bytes()
    with pytest.raises(OutputExistsError, match="never writes over its inputs"):
        convert_checkpoint(ckpt, run / "config.json", run, overwrite=True)
    assert (run / "config.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(OutputExistsError, match="another kind of model"):
        convert_checkpoint(ckpt, tiny_config(), clip, overwrite=True)
    assert sorted(p.name for p in clip.iterdir()) == ["config.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="must be a directory"):
        convert_checkpoint(ckpt, tiny_config(), tmp_path / "file")


def test_configuration_and_categories_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "num_labels": 3,\n  oops\n}\n')
    with pytest.raises(JSONFileError, match=r"config\.json, line 3 column 3"):
        convert_checkpoint(tmp_path / "none.ckpt", bad, tmp_path / "o")
    bad.write_text("[1, 2]")
    with pytest.raises(JSONFileError, match="not a JSON object"):
        convert_checkpoint(tmp_path / "none.ckpt", bad, tmp_path / "o")
    with pytest.raises(WrongModelKindError, match="'clip' model"):
        legacy_config({"model_type": "clip", "num_labels": 3})
    with pytest.raises(WrongModelKindError, match="needs no conversion"):
        legacy_config({"model_type": "egtr", "num_labels": 3})
    categories = tmp_path / "categories_dict.json"
    categories.write_text('{"obj": ["a"]}')
    with pytest.raises(JSONFileError, match=r"no 'rel' list \(.*categories_dict\.json\)"):
        read_categories(categories)
    categories.write_text("not json")
    with pytest.raises(JSONFileError, match=r"categories_dict\.json, line 1 column 1"):
        read_categories(categories)
    assert not (tmp_path / "o").exists()


def _front_matter(card: str) -> dict[str, object]:
    """The YAML block between the first two ``---`` lines of a model card, parsed."""
    import yaml

    lines = card.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    data = yaml.safe_load("\n".join(lines[1:end]))
    assert isinstance(data, dict)
    return data


def test_convert_writes_a_model_card_naming_the_source(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    import hashlib

    from egtr.convert import legacy_config

    legacy = {**LEGACY_VG_CONFIG, "decoder_layers": 2, "num_labels": 3, "num_rel_labels": 4}
    legacy.pop("id2label")
    legacy.pop("label2id")
    run_config = tmp_path / "run config.json"  # a space: the command must stay one shell word
    run_config.write_text(json.dumps(legacy))
    categories = tmp_path / "categories_dict.json"
    categories.write_text(json.dumps({"obj": ["cat", "dog", "table"], "rel": list("abcd")}))
    model = EGTRForSceneGraphGeneration(
        legacy_config(legacy, object_labels=["cat", "dog", "table"], predicate_labels=list("abcd"))
    )
    ckpt = save_lightning(legacy_names(model.state_dict(), 2), tmp_path / "epoch=03.ckpt")
    out = tmp_path / "egtr-tiny"
    convert_checkpoint(ckpt, run_config, out, categories=categories)
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["license"] == "other"
    assert meta["library_name"] == "egtr"
    assert meta["pipeline_tag"] == "object-detection"
    tags = meta["tags"]
    assert isinstance(tags, list)
    assert {"scene-graph-generation", "egtr", "converted"} <= set(tags)
    assert meta["datasets"] == []  # 3 objects / 4 predicates: not one of the paper's
    assert "base_model" not in meta  # the source is not on a model hub
    source = meta["source_checkpoint"]
    assert isinstance(source, dict)
    assert source["file"] == "epoch=03.ckpt"
    assert source["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert source["run_config"] == "run config.json"
    assert source["run_config_sha256"] == hashlib.sha256(run_config.read_bytes()).hexdigest()
    command = str(meta["conversion_command"])
    import shlex

    assert shlex.split(command) == [
        "egtr",
        "convert",
        "--checkpoint",
        str(ckpt),
        "--config",
        str(run_config),
        "--out",
        str(out),
        "--categories",
        str(categories),
    ]
    body = card.split("\n---\n", 1)[1]
    assert source["sha256"] in body
    assert command in body
    assert "3 objects, 4 predicates" in body
    # the card is written before config.json, and the model still loads strictly
    assert load_pretrained(out).config.object_labels == ["cat", "dog", "table"]


def test_the_model_card_of_the_released_vg_model_names_visual_genome(tmp_path: Path) -> None:
    from egtr.convert import model_card

    model = EGTRForSceneGraphGeneration(legacy_config(LEGACY_VG_CONFIG))
    ckpt = tmp_path / "epoch=09.ckpt"
    ckpt.write_bytes(b"stands in for the checkpoint")
    card = model_card(model, checkpoint=ckpt, config=None, out=tmp_path / "egtr-vg")
    meta = _front_matter(card)
    assert meta["datasets"] == ["visual_genome"]
    assert "conversion_command" not in meta  # a configuration object has no command line
    assert "run_config" not in meta["source_checkpoint"]  # type: ignore[operator]
    assert "# egtr-vg: EGTR, converted" in card
    assert "150 objects, 50 predicates" in card
