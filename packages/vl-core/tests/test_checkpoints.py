"""Safe checkpoint loading, refusal of code-carrying pickles, key renaming and load reports."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vl_core.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    LoadReport,
    RenameRule,
    UnsafeCheckpointError,
    load_into,
    load_state_dict,
    rename_keys,
    save_safetensors,
)


class Tiny(nn.Module):
    """A linear layer and a batch norm: parameters plus buffers, including num_batches_tracked."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 3)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # type: ignore[no-any-return]


class Payload:
    """Pickles to a call of os.system: what weights-only loading must refuse to run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"echo pwned > {self.marker}",))


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "proj.weight": torch.randn(3, 4, generator=generator),
        "proj.bias": torch.randn(3, generator=generator),
        "norm.weight": torch.rand(3, generator=generator),
        "norm.bias": torch.randn(3, generator=generator),
        "norm.running_mean": torch.randn(3, generator=generator),
        "norm.running_var": torch.rand(3, generator=generator) + 0.5,
        "norm.num_batches_tracked": torch.tensor(7),
    }


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0)


# --- load_state_dict ----------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path) -> None:
    state = random_state()
    path = tmp_path / "weights.safetensors"
    save_safetensors(state, path, metadata={"format": "pt"})
    assert_same(load_state_dict(path), state)
    assert_same(load_state_dict(str(path)), state)


def test_torch_pickle_round_trip(tmp_path: Path) -> None:
    state = random_state()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    assert_same(load_state_dict(path), state)


def test_lightning_nesting_is_auto_detected(tmp_path: Path) -> None:
    inner = {"model.x": torch.ones(2), "model.y": torch.zeros(3)}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": inner, "epoch": 3, "global_step": 120}, path)
    assert_same(load_state_dict(path), inner)


def test_key_selects_nested_dict(tmp_path: Path) -> None:
    model_state = {"a": torch.ones(1)}
    path = tmp_path / "train.pth"
    torch.save({"model": model_state, "optimizer": {"lr": 0.1}, "epoch": 2}, path)
    assert_same(load_state_dict(path, key="model"), model_state)
    with pytest.raises(CheckpointError, match="key=") as no_key:
        load_state_dict(path)  # no tensors at the top, no "state_dict": ask for key=
    assert "'epoch', 'model', 'optimizer'" in str(no_key.value)
    with pytest.raises(CheckpointError, match="no key 'module'"):
        load_state_dict(path, key="module")
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        load_state_dict(path, key="epoch")


def test_non_tensor_leaves_raise_or_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2), "step": 5, "name": "run-1"}, path)
    with pytest.raises(CheckpointError, match="allow_non_tensor") as info:
        load_state_dict(path)
    assert "'step' (int)" in str(info.value)
    assert "'name' (str)" in str(info.value)
    with pytest.warns(UserWarning, match="'step'"):
        kept = load_state_dict(path, allow_non_tensor=True)
    assert_same(kept, {"w": torch.ones(2)})


@pytest.mark.parametrize(
    ("via", "reason"),
    [("torch.save", "system"), ("pickle protocol 2", "system"), ("pickle protocol 4", "operand")],
)
def test_code_carrying_pickle_is_refused(tmp_path: Path, via: str, reason: str) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    payload = {"hook": Payload(marker), "state_dict": {"w": torch.ones(1)}}
    if via == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=int(via[-1]))
    with warnings.catch_warnings():  # torch warns that it reads protocol 4 only partially
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(UnsafeCheckpointError, match=reason) as info:
            load_state_dict(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()
    os.system(f"echo pwned > {marker}")  # the call the payload names does create the file
    assert marker.exists()


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors"):
        load_state_dict(missing)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_state_dict(text)
    good = tmp_path / "good.pt"
    torch.save(random_state(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_state_dict(cut)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        load_state_dict(broken)


# --- renaming -----------------------------------------------------------------------------------


def test_rename_rules_apply_in_order() -> None:
    state = {"module.encoder.fc.weight": 1, "module.head.bias": 2}
    rules: list[RenameRule | tuple[str, str]] = [
        RenameRule(r"^module\.", ""),
        (r"^encoder\.", "backbone."),
        (r"\.fc\.", ".proj."),
    ]
    assert rename_keys(state, rules) == {"backbone.proj.weight": 1, "head.bias": 2}
    assert rename_keys(state, []) == state


def test_duplicate_targets_after_renaming_raise() -> None:
    state = {"module.w": 1, "w": 2}
    with pytest.raises(CheckpointError, match=r"'module\.w' and 'w' to 'w'"):
        rename_keys(state, [(r"^module\.", "")])


def test_invalid_rename_pattern_is_reported() -> None:
    with pytest.raises(ValueError, match="invalid rename pattern"):
        RenameRule("(unclosed", "")


# --- load_into ----------------------------------------------------------------------------------


def test_load_into_with_rename_rules_reports_them() -> None:
    state = {f"model.{name}": tensor for name, tensor in random_state().items()}
    model = Tiny()
    report = load_into(model, state, rules=[(r"^model\.", "")])
    assert report.ok
    assert report.loaded == 7
    assert ("model.proj.weight", "proj.weight") in report.renamed
    assert len(report.renamed) == 7
    torch.testing.assert_close(model.proj.weight.detach(), state["model.proj.weight"])
    assert int(model.state_dict()["norm.num_batches_tracked"]) == 7
    assert "loaded 7 tensors" in str(report)


def test_strict_load_lists_every_problem_and_leaves_model_untouched() -> None:
    state = random_state()
    state["proj.weight"] = torch.randn(3, 5)  # wrong shape
    del state["norm.bias"]  # missing
    state["extra.scale"] = torch.ones(1)  # unexpected
    model = Tiny()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(model, state)
    report = info.value.report
    assert report.missing_keys == ("norm.bias",)
    assert report.unexpected_keys == ("extra.scale",)
    assert report.shape_mismatches == (("proj.weight", (3, 5), (3, 4)),)
    assert not report.ok
    message = str(info.value)
    for fragment in ("norm.bias", "extra.scale", "proj.weight: (3, 5) vs (3, 4)"):
        assert fragment in message
    assert_same(model.state_dict(), before)  # nothing was loaded


def test_non_strict_load_returns_report_and_loads_matches() -> None:
    state = random_state()
    state["proj.weight"] = torch.randn(3, 5)
    del state["norm.bias"]
    state["extra.scale"] = torch.ones(1)
    model = Tiny()
    old_weight = model.proj.weight.detach().clone()
    report = load_into(model, state, strict=False)
    assert isinstance(report, LoadReport)
    assert not report.ok
    assert report.loaded == 5
    assert report.missing_keys == ("norm.bias",)
    torch.testing.assert_close(model.proj.bias.detach(), state["proj.bias"])
    torch.testing.assert_close(model.norm.running_var, state["norm.running_var"])
    torch.testing.assert_close(model.proj.weight.detach(), old_weight)  # mismatched: kept


def test_ignore_pattern_drops_num_batches_tracked() -> None:
    state = random_state()
    model = Tiny()
    report = load_into(model, state, ignore=[r"num_batches_tracked$"])
    assert report.ok
    assert report.ignored_keys == ("norm.num_batches_tracked",)
    assert report.loaded == 6
    assert int(model.state_dict()["norm.num_batches_tracked"]) == 0  # the model's own value is kept
    del state["norm.num_batches_tracked"]  # an older checkpoint without the buffer
    with pytest.raises(CheckpointMismatchError, match="num_batches_tracked"):
        load_into(Tiny(), state)
    assert load_into(Tiny(), state, ignore=[r"num_batches_tracked$"]).ok


def test_tensors_are_cast_to_model_dtype() -> None:
    state = {name: tensor.double() for name, tensor in random_state().items()}
    state["norm.num_batches_tracked"] = torch.tensor(7)
    model = Tiny().half()
    assert load_into(model, state).ok
    assert model.proj.weight.dtype == torch.float16
    torch.testing.assert_close(model.proj.weight.detach(), state["proj.weight"].half())


def test_round_trip_through_safetensors_into_a_fresh_model(tmp_path: Path) -> None:
    source = Tiny()
    with torch.no_grad():
        source.state_dict()["norm.running_mean"].uniform_()
    path = tmp_path / "tiny.safetensors"
    save_safetensors(source.state_dict(), path)
    target = Tiny()
    assert load_into(target, load_state_dict(path)).ok
    x = torch.randn(5, 4)
    source.eval()
    target.eval()
    torch.testing.assert_close(target(x), source(x))


# --- save_safetensors ---------------------------------------------------------------------------


def test_save_handles_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "tied.a": base,
        "tied.b": base,  # same storage (tied weights)
        "transposed": base.t(),  # shares storage and is non-contiguous
        "slice": base[1:],  # a view into part of the buffer
    }
    path = tmp_path / "shared.safetensors"
    save_safetensors(state, path, metadata={"note": "tied"})
    loaded = load_file(path)
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    assert base.data_ptr() == state["tied.a"].data_ptr()  # the caller's tensors are untouched
    assert not any(p.name.startswith(".shared") for p in tmp_path.iterdir())  # no temp file left
