"""A researcher evaluates: clip4dm on a benchmark, and egtr's SGG metrics on own predictions."""

from pathlib import Path

import numpy as np

from clip4dm.eval import EvalConfig, EvalSummary, average_precision, run_eval
from egtr.evaluation import GroundTruth, PredictedTriplets, SGGEvaluator

config = EvalConfig(benchmark="foil", data="foilv1.0_test_2017.json", out="runs/foil")
summary: EvalSummary | None = run_eval(config, progress=False)
if summary is not None:
    out_dir: Path = summary.out_dir
    errors: int = summary.errors
ap: float | None = average_precision([True, False, True], [0.9, 0.4, 0.2])

evaluator = SGGEvaluator(num_predicates=50)
gt = GroundTruth.create(
    boxes=np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]),
    labels=np.array([1, 2]),
    rels=np.array([[0, 1, 3]]),
)
pred = PredictedTriplets.create(
    boxes=np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]),
    labels=np.array([1, 2]),
    subjects=np.array([0]),
    objects=np.array([1]),
    predicates=np.array([3]),
    scores=np.array([0.8]),
)
per_image: dict[str, float] | None = evaluator.add(gt, pred)
metrics = evaluator.compute()
