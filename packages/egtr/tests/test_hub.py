"""EGTR by name: ``hf:ORG/NAME`` hub ids (offline, from a Hugging Face cache laid out here; the
network is never used), and transformers' Auto classes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from egtr_testing import make_image

from egtr import EGTRForSceneGraphGeneration, EGTRPredictor, load_pretrained
from egtr.builders import (
    ModelDirectoryError,
    ModelNotFoundError,
    ModelUnavailableError,
    is_hub_name,
    resolve_model,
)
from egtr.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _lay_out(cache: Path, repo: str, source: Path) -> Path:
    """``source``'s model files as the Hugging Face cache holds a download of ``repo``:
    ``models--ORG--NAME/snapshots/<commit>/...`` and ``refs/main`` naming the commit."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def _no_network(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the Hugging Face Hub was contacted")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (``HF_HUB_CACHE``), offline, with the hub API cut off."""
    import huggingface_hub

    folder = tmp_path / "hf-cache"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for method in ("repo_info", "model_info", "list_repo_tree", "get_paths_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, method, _no_network)
    return folder


def _error_line(err: str) -> str:
    """The one ``egtr[ COMMAND]: error:`` line of stderr (asserting there is exactly one line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(r"egtr( [a-z]+)?: error: ", lines[0]), err
    return lines[0]


# -- naming rule ----------------------------------------------------------------------------------


def test_which_names_are_hub_ids(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert is_hub_name("hf:org/name")
    assert is_hub_name("hf:gpt2-like")
    assert not is_hub_name("org/name")  # a bare name is a path
    assert not is_hub_name(str(tiny_model_dir))
    assert not is_hub_name(f"hf:{tiny_model_dir}")  # hf:DIR is that local directory
    assert resolve_model(f"hf:{tiny_model_dir}") == tiny_model_dir
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    odd = tmp_path / "hf:odd"  # an existing directory is local, whatever its name
    odd.mkdir()
    assert not is_hub_name(odd)
    assert resolve_model(odd) == odd


def test_a_bare_hub_like_name_is_a_path_and_the_error_suggests_hf(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"hf:org/tiny for the Hugging Face Hub model"):
        load_pretrained("org/tiny")
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor"):
        load_pretrained("hf:./not-here")


# -- offline, from the cache ----------------------------------------------------------------------


def test_a_hub_id_loads_from_the_cache_offline_strictly(cache: Path, tiny_model_dir: Path) -> None:
    snapshot = _lay_out(cache, "org/tiny", tiny_model_dir)
    assert resolve_model("hf:org/tiny") == snapshot
    model = load_pretrained("hf:org/tiny")
    direct = load_pretrained(tiny_model_dir)
    ours, theirs = model.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert load_pretrained(Path("hf:org/tiny")).config.num_queries == 6  # a Path (as eval gives)


def test_a_hub_model_with_a_missing_weight_is_refused(cache: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    snapshot = _lay_out(cache, "org/broken", tiny_model_dir)
    weights = load_file(snapshot / "model.safetensors")
    del weights["relation_head.gate.weight"]
    save_file(weights, snapshot / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelDirectoryError, match=r"missing 1: relation_head\.gate\.weight"):
        load_pretrained("hf:org/broken")


def test_a_hub_id_not_in_the_cache_fails_at_once_offline(cache: Path) -> None:
    with pytest.raises(ModelUnavailableError) as exc:
        load_pretrained("hf:org/absent")
    message = str(exc.value)
    assert "'hf:org/absent'" in message
    assert "HF_HUB_OFFLINE" in message
    assert str(cache) in message
    assert "local copy" in message
    assert "\n" not in message
    assert isinstance(exc.value, ModelNotFoundError)  # a FileNotFoundError and a ValueError
    with pytest.raises(ModelUnavailableError, match="not a valid Hugging Face Hub id"):
        load_pretrained("hf:org/bad name")


def test_predictor_from_pretrained_takes_a_hub_id(cache: Path, tiny_model_dir: Path) -> None:
    _lay_out(cache, "org/tiny", tiny_model_dir)
    image = make_image(90, 70, 5)
    by_name = EGTRPredictor.from_pretrained("hf:org/tiny", device="cpu", top_k=3)
    assert by_name.top_k == 3
    by_dir = EGTRPredictor(tiny_model_dir, device="cpu", top_k=3)
    assert by_name.predict(image)[0].to_dict() == by_dir.predict(image)[0].to_dict()
    constructed = EGTRPredictor("hf:org/tiny", device="cpu", top_k=3)
    assert constructed.predict(image)[0].to_dict() == by_dir.predict(image)[0].to_dict()
    with pytest.raises(ModelUnavailableError, match="hf:org/absent"):
        EGTRPredictor.from_pretrained("hf:org/absent")


# -- the command line -----------------------------------------------------------------------------


def test_predict_and_info_take_a_hub_id_offline(
    cache: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _lay_out(cache, "org/tiny", tiny_model_dir)
    image = tmp_path / "photo.png"
    make_image(80, 60, 2).save(image)
    base = ["predict", str(image), "--json", "--quiet", "--top-k", "2", "--device", "cpu"]
    assert main([*base, "--model", "hf:org/tiny"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main([*base, "--model", str(tiny_model_dir)]) == 0
    assert by_name == json.loads(capsys.readouterr().out)
    out = tmp_path / "graphs.jsonl"
    assert main(["predict", str(image), "--model", "hf:org/tiny", "--out", str(out)]) == 0
    manifest = json.loads((tmp_path / "graphs.jsonl.run.json").read_text())
    assert manifest["model"] == "hf:org/tiny"
    assert set(manifest["model_files"]) == {"config.json", "model.safetensors"}
    capsys.readouterr()
    assert main(["info", "--model", "hf:org/tiny"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["model"], summary["objects"], summary["queries"]) == ("hf:org/tiny", 3, 6)


def test_predict_with_a_hub_id_not_in_the_cache_is_one_line_and_touches_nothing(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    make_image(80, 60, 2).save(image)
    out = tmp_path / "graphs.jsonl"
    argv = ["predict", str(image), "--model", "hf:org/absent", "--out", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert "'hf:org/absent'" in line
    assert "HF_HUB_OFFLINE" in line
    assert "--model" in line  # how to point at a local copy
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf-cache", "photo.png"]
    assert main(["info", "--model", "hf:org/absent"]) == 2
    assert "'hf:org/absent'" in _error_line(capsys.readouterr().err)


# -- online: a first download is announced (the hub client is replaced; no network) --------------


def test_a_first_download_says_so_once_with_its_size(
    cache: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> Any:
        calls.append({"repo_id": repo_id, **kwargs})
        assert kwargs["allow_patterns"] == [
            "config.json",
            "*.safetensors",
            "*.safetensors.index.json",
        ]
        assert Path(kwargs["cache_dir"]) == cache
        if kwargs.get("dry_run"):
            sizes = {"config.json": 3_000, "model.safetensors": 1_231_567}
            return [
                SimpleNamespace(filename=name, file_size=size, will_download=True)
                for name, size in sizes.items()
            ]
        assert not kwargs["local_files_only"]
        snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
        if not snapshot.exists():
            _lay_out(cache, "org/tiny", tiny_model_dir)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_pretrained("hf:org/tiny")
    assert isinstance(model, EGTRForSceneGraphGeneration)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "egtr: downloading org/tiny (about 1.2 MB) from the Hugging Face Hub; set "
        "HF_HUB_OFFLINE=1 or pass --model DIR to use local files"
    ]
    assert [call.get("dry_run", False) for call in calls] == [True, False]
    load_pretrained("hf:org/tiny")  # cached now: no second notice, no size query
    assert capsys.readouterr().err == ""
    assert [call.get("dry_run", False) for call in calls] == [True, False, False]


def test_a_failed_download_names_the_model(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(repo_id: str, **kwargs: Any) -> Any:
        raise OSError("Connection refused\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelUnavailableError) as exc:
        load_pretrained("hf:org/tiny")
    message = str(exc.value)
    assert "'hf:org/tiny'" in message
    assert "could not be downloaded (OSError: Connection refused)" in message
    assert "\n" not in message
    # the size could not be asked either: the notice still came first, without a size
    assert "egtr: downloading org/tiny from the Hugging Face Hub" in capsys.readouterr().err


# -- transformers' Auto classes -------------------------------------------------------------------


def test_auto_classes_open_an_egtr_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    from egtr import EGTRConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert isinstance(config, EGTRConfig)
    assert config.rel_labels == ["on", "near", "has", "under"]
    model = AutoModel.from_pretrained(tiny_model_dir)
    assert isinstance(model, EGTRForSceneGraphGeneration)
    direct = load_pretrained(tiny_model_dir).state_dict()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in direct.items())
    fresh = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    assert isinstance(fresh, EGTRForSceneGraphGeneration)
    # save_pretrained of an Auto-loaded model is a model directory again (strictly loadable)
    model.save_pretrained(tmp_path / "again")
    assert load_pretrained(tmp_path / "again").config.num_queries == 6


def test_the_pipeline_takes_a_hub_id_offline(
    cache: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants
    from transformers import pipeline

    import egtr.pipeline

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # transformers reads it here
    _lay_out(cache, "org/tiny", tiny_model_dir)
    sgg = pipeline(egtr.pipeline.TASK, model="org/tiny", device="cpu", top_k=2)
    image = make_image(50, 50, 4)
    expected = EGTRPredictor(tiny_model_dir, device="cpu", top_k=2).predict(image)[0]
    assert sgg(image) == expected.to_dict()
