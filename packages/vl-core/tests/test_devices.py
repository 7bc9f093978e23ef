"""Device and dtype selection: "auto" rules, string forms, and clear errors."""

from __future__ import annotations

import pytest
import torch

from vl_core.devices import resolve_device, resolve_dtype


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.usefixtures("no_cuda")
def test_auto_on_a_cpu_machine() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", "auto") is torch.float32
    assert resolve_dtype("auto") is torch.float32  # device defaults to cpu


@pytest.mark.usefixtures("fake_cuda")
@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_a_cuda_machine(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", "auto") is expected
    assert resolve_dtype("auto", "cuda:0") is expected
    assert resolve_dtype("auto", "cpu") is torch.float32  # an explicit CPU stays fp32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        (torch.float64, torch.float64),
    ],
)
def test_dtype_names(name: str | torch.dtype, expected: torch.dtype) -> None:
    assert resolve_dtype(name) is expected


def test_explicit_devices_pass_through() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    meta = torch.device("meta")
    assert resolve_device(meta) is meta


def test_unknown_dtype_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown dtype 'int8'.*'bf16'"):
        resolve_dtype("int8")


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error_unpatched() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
