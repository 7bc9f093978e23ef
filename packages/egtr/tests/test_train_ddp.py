"""Two-process CPU (gloo) DistributedDataParallel run against one process with the same global
batch (accumulation instead of a second process): same losses, same parameters on both ranks."""

from __future__ import annotations

from pathlib import Path

import torch
from egtr_testing import tiny_config
from train_testing import (
    SyntheticSceneGraphs,
    collate,
    ddp_worker,
    free_port,
    tiny_training_config,
)

from egtr import EGTRForSceneGraphGeneration
from egtr.training import Trainer
from egtr.training.metrics import read_metrics


def test_two_process_gloo_run_matches_single_process(tmp_path: Path) -> None:
    config = tiny_training_config("egtr", epochs=1)  # 4 images, 2 per step: 2 steps
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    torch.multiprocessing.start_processes(  # type: ignore[attr-defined,no-untyped-call]
        ddp_worker,
        args=(2, free_port(), str(ddp_dir), config.to_dict()),
        nprocs=2,
        start_method="spawn",
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = EGTRForSceneGraphGeneration(tiny_config(dropout=0.0))
        single_dir = tmp_path / "single"
        data = SyntheticSceneGraphs(4, augment=True)
        single = Trainer(config, model, data, collate, single_dir, device="cpu")
        assert single.accumulation == 2
        single.fit()
    finally:
        torch.set_num_threads(threads)

    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
    # gradients are summed in another order (all-reduce vs accumulation): equal up to rounding
    for name, value in single.module.state_dict().items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-7, msg=name)
    ddp_log = [r for r in read_metrics(ddp_dir / "metrics.jsonl") if r["event"] == "train"]
    single_log = [r for r in read_metrics(single_dir / "metrics.jsonl") if r["event"] == "train"]
    assert len(ddp_log) == len(single_log) == 2
    for got, want in zip(ddp_log, single_log, strict=True):
        for key in ("loss", "ce", "bbox", "giou", "rel", "connectivity"):
            assert abs(float(got[key]) - float(want[key])) <= 1e-6 * abs(float(want[key])), key
