"""CUDA checks of egtr: GPU forward equals CPU forward, autocast stays close, the relation head
never allocates the literal pair tensor, and one DDP (NCCL) + autocast/GradScaler training step runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from egtr_testing import randomise, tiny_config

from egtr import EGTRForSceneGraphGeneration
from egtr.relation_head import RelationHead, literal_relation_logits

pytestmark = pytest.mark.gpu

OUTPUTS = ("logits", "pred_boxes", "pred_rel", "pred_connectivity")


def _model() -> EGTRForSceneGraphGeneration:
    torch.manual_seed(0)
    model = EGTRForSceneGraphGeneration(tiny_config()).eval()
    randomise(model)
    return model


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 64, 80, generator=gen)
    mask = torch.ones(2, 64, 80, dtype=torch.long)
    mask[1, :, 60:] = 0  # second image padded on the right
    return pixels.to(device), mask.to(device)


def test_cuda_forward_equals_cpu_fp32() -> None:
    model = _model()
    with torch.inference_mode():
        cpu = model(*_inputs("cpu"))
        model.cuda()
        gpu = model(*_inputs("cuda"))
    for name in OUTPUTS:
        torch.testing.assert_close(
            getattr(gpu, name).cpu(), getattr(cpu, name), atol=2e-4, rtol=2e-3
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_stays_close_to_fp32(dtype: torch.dtype) -> None:
    model = _model().cuda()
    pixels, mask = _inputs("cuda")
    with torch.inference_mode():
        ref = model(pixels, mask)
        with torch.autocast("cuda", dtype=dtype):
            out = model(pixels, mask)
    for name in ("pred_boxes", "pred_rel", "pred_connectivity"):
        diff = (getattr(out, name).float() - getattr(ref, name)).abs().max().item()
        assert diff < 5e-2, (name, diff)


def test_relation_head_never_allocates_the_pair_tensor() -> None:
    # the paper's sizes: N = 200 queries, d = 256, L = 6 decoder layers, P = 50 predicates
    batch, n, d, layers, predicates = 1, 200, 256, 6, 50
    head = RelationHead(d, layers, predicates).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, layers, n, d, device="cuda", generator=gen)
    k = torch.randn(batch, layers, n, d, device="cuda", generator=gen)
    z = torch.randn(batch, n, d, device="cuda", generator=gen)
    pair_tensor_bytes = batch * n * n * (layers + 1) * 2 * d * 4

    def peak(fn: object) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn()  # type: ignore[operator]
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    factorised = peak(lambda: head(q, k, z))
    literal = peak(lambda: literal_relation_logits(head, q, k, z))
    assert literal >= pair_tensor_bytes  # the measurement sees the pair tensor when it exists
    assert factorised < pair_tensor_bytes  # ... and the factorised head never builds it
    with torch.inference_mode():
        fast, lit = head(q, k, z), literal_relation_logits(head, q, k, z)
    torch.testing.assert_close(fast[0], lit[0], atol=1e-3, rtol=1e-3)


@pytest.fixture
def nccl_group() -> Iterator[None]:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_one_ddp_nccl_step_with_autocast_and_grad_scaling(nccl_group: None) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = _model().train().cuda()
    ddp = DistributedDataParallel(model, device_ids=[0], find_unused_parameters=True)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    pixels, mask = _inputs("cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=torch.float16):
        out = ddp(pixels, mask)
        loss = out.rel_logits.float().sigmoid().mean() + out.pred_boxes.float().mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.1)
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
    changed = sum(
        not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True)
    )
    assert changed > 0
