"""The egtr command line parses and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egtr.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out


def test_info_reports_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["egtr"] != "not installed"
    assert "torch" in report


def test_help_lists_all_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("predict", "convert", "info"):
        assert command in out


def test_predict_writes_jsonl_and_drawings(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from egtr_testing import make_image

    first, second = tmp_path / "a.jpg", tmp_path / "b.png"
    make_image(90, 70, 1).save(first)
    make_image(60, 80, 2).save(second)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00garbage")
    out = tmp_path / "graphs.jsonl"
    code = main(
        [
            "predict",
            str(first),
            str(broken),
            str(second),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--draw",
            str(tmp_path / "draw"),
            "--top-k",
            "3",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 1  # one image was skipped
    err = capsys.readouterr().err
    assert "skipped" in err
    assert "broken.jpg" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == [str(first), str(second)]
    assert all(len(r["relations"]) == 3 for r in records)
    assert records[0]["image_size"] == [90, 70]
    for name in ("a.png", "b.png"):
        assert (tmp_path / "draw" / name).read_bytes()[:4] == b"\x89PNG"


def test_predict_json_to_stdout(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from egtr_testing import make_image

    image = tmp_path / "c.png"
    make_image(64, 64, 3).save(image)
    assert main(["predict", str(image), "--model", str(tiny_model_dir), "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["image"] == str(image)
    assert data[0]["relations"]
    assert len(data[0]["objects"]) == 6  # every query of the tiny model passes the 0.3 default
    assert (
        main(
            [
                "predict",
                str(image),
                "--model",
                str(tiny_model_dir),
                "--json",
                "--quiet",
                "--top-k",
                "1",
                "--object-threshold",
                "none",
            ]
        )
        == 0
    )
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["objects"]) == 2  # only the two objects of the one relation


def test_predict_rejects_a_bad_object_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "x.jpg", "--model", "m", "--object-threshold", "high"])
    assert exc.value.code == 2
    assert "--object-threshold" in capsys.readouterr().err


def test_predict_reports_missing_and_corrupt_images(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "graphs.jsonl"
    code = main(
        [
            "predict",
            str(tmp_path / "missing.jpg"),
            str(corrupt),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "skipped" in err
    assert "missing.jpg" in err
    assert "corrupt.png" in err
    assert out.read_text() == ""


def test_predict_reports_a_bad_model_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "x.jpg", "--model", str(tmp_path)]) == 1
    assert "not an EGTR model directory" in capsys.readouterr().err


def test_convert_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from egtr import EGTRForSceneGraphGeneration
    from egtr.convert import legacy_config

    legacy = {
        "model_type": "deformable_detr",
        "backbone": "resnet18",
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_n_points": 1,
        "decoder_n_points": 1,
        "num_queries": 5,
        "num_labels": 3,
        "num_rel_labels": 2,
    }
    model = EGTRForSceneGraphGeneration(legacy_config(legacy))
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        key = key.replace(".mlp.fc", ".fc").replace("self_attn.o_proj", "self_attn.out_proj")
        key = key.replace("relation_head.gate.", "rel_predictor_gate.")
        key = key.replace("relation_head.rel_mlp.", "rel_predictor.")
        key = key.replace("relation_head.connectivity_mlp.", "connectivity_layer.")
        key = key.replace("relation_head.", "")
        key = key.replace("class_embed.", "class_embed.0.").replace("bbox_embed.", "bbox_embed.0.")
        state[f"model.{key}"] = value
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    categories = tmp_path / "categories_dict.json"
    categories.write_text(json.dumps({"obj": ["a", "b", "c"], "rel": ["on", "by"]}))
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "run.ckpt"),
                "--config",
                str(tmp_path / "config.json"),
                "--out",
                str(out),
                "--categories",
                str(categories),
            ]
        )
        == 0
    )
    assert "converted" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["objects"] == 3
    assert info["predicates"] == 2
    assert info["backbone"] == "resnet18"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["with_frequency_table"] == info["parameters"] + 4 * 4 * 2


def test_convert_reports_a_wrong_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    (tmp_path / "config.json").write_text(json.dumps({"num_labels": 3, "num_rel_labels": 2}))
    code = main(
        [
            "convert",
            "--checkpoint",
            str(bad),
            "--config",
            str(tmp_path / "config.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "bad.ckpt" in capsys.readouterr().err
    # a checkpoint that does not exist
    code = main(
        [
            "convert",
            "--checkpoint",
            str(tmp_path / "nope.ckpt"),
            "--config",
            str(tmp_path / "config.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "nope.ckpt" in capsys.readouterr().err


def test_predict_reports_a_corrupt_model_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["predict", "x.jpg", "--model", str(broken), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot load model" in err
