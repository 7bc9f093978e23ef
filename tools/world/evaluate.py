"""clip4dm on a shapes world's FOIL and HAT files, with the clip4dm spec's metrics (§4).

FOIL (``most_negative``): LA = foil captions whose lowest word equals the foil word
(lower-cased); AP over all captions with aligned captions positive, scored by CLIPScore and by
F-CLIPScore. HAT (``threshold``): LA = hallucinated captions whose predicted phrase (adjacent
selected words merged; the phrase of lowest mean score) occurs, in order and adjacent, among the
hallucinated words; AP with
hallucinated captions positive, scored by -F-CLIPScore and -CLIPScore. ``LA_exact`` variants
also require the predicted word positions to be the changed ones (captions may repeat a word).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import clip4dm.eval as clip4dm_eval
from clip4dm import CLIP4DM, Detection, WordScore, f_clip_score, select_misaligned

#: epsilon candidates searched on the validation split (attribution scale of a small model)
EPSILON_GRID: tuple[float, ...] = (
    *(-m * 10.0**e for e in (-6, -5, -4, -3, -2) for m in (1.0, 2.0, 5.0)),
    0.0,
)


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """clip4dm's average precision (scikit-learn's definition); at least one positive needed."""
    ap = clip4dm_eval.average_precision(labels, scores)
    if ap is None:
        raise ValueError("average precision needs at least one positive")
    return ap


def _clean(word: str) -> str:
    return word.lower().strip(".,")


def load_foil(root: Path, split: str) -> list[dict[str, Any]]:
    """FOIL rows: ``image`` path, ``caption``, ``foil`` flag, ``foil_word``, ``index``."""
    data = json.loads((root / "foil" / f"{split}.json").read_text(encoding="utf-8"))
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    rows = []
    for ann in data["annotations"]:
        rows.append(
            {
                "image": str(root / "images" / files[int(ann["image_id"])]),
                "caption": ann["caption"],
                "foil": bool(ann["foil"]),
                "foil_word": ann["foil_word"],
                "index": ann.get("foil_word_index"),
                "kind": ann.get("foil_kind", "orig"),
            }
        )
    return rows


def load_hat(root: Path, split: str) -> list[dict[str, Any]]:
    """HAT rows: ``image``, ``caption``, hallucinated ``words`` and their ``indices``."""
    data = json.loads((root / "hat" / f"{split}.json").read_text(encoding="utf-8"))
    rows = []
    for entry in data:
        grounding = entry["grounding"]
        rows.append(
            {
                "image": str(root / "images" / entry["image_path"]),
                "caption": entry["caption"],
                "hallucinated": bool(entry["contains_hallucination"]),
                "words": [_clean(w) for w, bad in grounding if bad],
                "indices": {i for i, (_, bad) in enumerate(grounding) if bad},
            }
        )
    return rows


def foil_metrics(rows: Sequence[dict[str, Any]], detections: Sequence[Detection]) -> dict[str, Any]:
    """FOIL metrics from ``most_negative`` detections in row order."""
    hits: dict[str, list[bool]] = {}
    exact: list[bool] = []
    chance: list[float] = []
    for row, det in zip(rows, detections, strict=True):
        if not row["foil"]:
            continue
        predicted = det.misaligned[0] if det.misaligned else None
        ok = predicted is not None and _clean(predicted.word) == _clean(row["foil_word"])
        hits.setdefault(row["kind"], []).append(ok)
        hits.setdefault("all", []).append(ok)
        if row["index"] is not None:
            exact.append(predicted is not None and predicted.index == row["index"])
        chance.append(1.0 / max(len(det.words), 1))
    labels = [not row["foil"] for row in rows]
    out: dict[str, Any] = {
        "captions": len(rows),
        "foils": len(hits.get("all", [])),
        "LA": _mean(hits.get("all", [])),
        "LA_exact": _mean(exact) if exact else None,
        "LA_chance": _mean(chance),
        "LA_by_kind": {k: _mean(v) for k, v in sorted(hits.items()) if k != "all"},
        "AP_F-CLIPScore": average_precision(labels, [d.f_clip_score for d in detections]),
        "AP_CLIPScore": average_precision(labels, [d.clip_score for d in detections]),
        "pairwise_by_kind": pairwise_by_kind(rows, detections),
    }
    return out


def pairwise_by_kind(
    rows: Sequence[dict[str, Any]], detections: Sequence[Detection]
) -> dict[str, float]:
    """Per foil kind, the share of foils whose CLIPScore is below that of the original caption(s)
    of the same image: whether the CLIP itself tells the two apart (0.5 = it cannot)."""
    originals: dict[str, list[float]] = {}
    for row, det in zip(rows, detections, strict=True):
        if not row["foil"]:
            originals.setdefault(row["image"], []).append(det.clip_score)
    wins: dict[str, list[float]] = {}
    for row, det in zip(rows, detections, strict=True):
        if row["foil"] and row["image"] in originals:
            scores = originals[row["image"]]
            won = sum(s > det.clip_score for s in scores) + 0.5 * sum(
                s == det.clip_score for s in scores
            )
            wins.setdefault(row["kind"], []).append(won / len(scores))
    return {kind: _mean(v) for kind, v in sorted(wins.items())}


def _phrase(words: Sequence[WordScore], selected: Sequence[WordScore]) -> list[WordScore]:
    """The lowest-mean phrase of adjacent selected words (clip4dm eval's HAT rule)."""
    best = clip4dm_eval.lowest_phrase(clip4dm_eval.merge_phrases(words, selected))
    return list(best.words) if best is not None else []


def hat_metrics(
    rows: Sequence[dict[str, Any]], detections: Sequence[Detection], epsilon: float
) -> dict[str, Any]:
    """HAT metrics; word scores are re-thresholded at ``epsilon`` (the detections' mode is
    irrelevant: selection is a function of the word scores, see ``clip4dm.select_misaligned``)."""
    la: list[bool] = []
    exact: list[bool] = []
    chance: list[float] = []
    f_scores: list[float] = []
    for row, det in zip(rows, detections, strict=True):
        chosen, negative_sum = select_misaligned(det.words, "threshold", epsilon)
        f_scores.append(f_clip_score(negative_sum, det.cosine))
        if not row["hallucinated"]:
            continue
        phrase = _phrase(det.words, chosen)
        la.append(_contiguous_in([_clean(w.word) for w in phrase], row["words"]))
        exact.append(bool(phrase) and all(w.index in row["indices"] for w in phrase))
        chance.append(len(row["indices"]) / max(len(det.words), 1))
    labels = [bool(row["hallucinated"]) for row in rows]
    return {
        "captions": len(rows),
        "hallucinated": len(la),
        "epsilon": epsilon,
        "LA": _mean(la),
        "LA_exact": _mean(exact),
        "LA_chance": _mean(chance),
        "AP_F-CLIPScore": average_precision(labels, [-s for s in f_scores]),
        "AP_CLIPScore": average_precision(labels, [-d.clip_score for d in detections]),
    }


def choose_epsilon(
    rows: Sequence[dict[str, Any]],
    detections: Sequence[Detection],
    grid: Sequence[float] = EPSILON_GRID,
) -> float:
    """The grid epsilon with the best HAT LA on these (validation) rows; ties: the better AP."""

    def rank(epsilon: float) -> tuple[float, float]:
        metrics = hat_metrics(rows, detections, epsilon)
        return round(metrics["LA"], 9), metrics["AP_F-CLIPScore"]

    return float(max(grid, key=rank))


def _mean(values: Sequence[bool] | Sequence[float]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def evaluate(
    model: str,
    root: str | Path,
    *,
    split: str = "test",
    val_split: str = "val",
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """FOIL (most_negative) and HAT (threshold, epsilon chosen on ``val_split``) metrics of the
    CLIP ``model`` (a ``clip4dm`` model name) on the world at ``root``."""
    base = Path(root)
    scorer = CLIP4DM(model, mode="most_negative", device=device, dtype="float32")
    foil_rows = load_foil(base, split)
    foil_dets = scorer.detect_batch(
        [r["image"] for r in foil_rows], [r["caption"] for r in foil_rows], batch_size=batch_size
    )
    val_rows = load_hat(base, val_split)
    val_dets = scorer.detect_batch(
        [r["image"] for r in val_rows], [r["caption"] for r in val_rows], batch_size=batch_size
    )
    epsilon = choose_epsilon(val_rows, val_dets)
    # the reported HAT numbers come from the public API in threshold mode at that epsilon
    detector = CLIP4DM(scorer.backbone, mode="threshold", epsilon=epsilon)
    hat_rows = load_hat(base, split)
    hat_dets = detector.detect_batch(
        [r["image"] for r in hat_rows], [r["caption"] for r in hat_rows], batch_size=batch_size
    )
    hat = hat_metrics(hat_rows, hat_dets, epsilon)
    hat["LA_from_detections"] = _mean(
        [_phrase_ok(r, d) for r, d in zip(hat_rows, hat_dets, strict=True) if r["hallucinated"]]
    )
    return {
        "model": model,
        "world": str(base),
        "split": split,
        "foil": foil_metrics(foil_rows, foil_dets),
        "hat": hat,
        "hat_val": hat_metrics(val_rows, val_dets, epsilon),
    }


def _phrase_ok(row: dict[str, Any], det: Detection) -> bool:
    return _contiguous_in(
        [_clean(w.word) for w in _phrase(det.words, det.misaligned)], row["words"]
    )


def _contiguous_in(part: Sequence[str], whole: Sequence[str]) -> bool:
    """``part`` is non-empty and occurs in ``whole`` in order and adjacent."""
    n = len(part)
    return n > 0 and any(list(whole[i : i + n]) == list(part) for i in range(len(whole) - n + 1))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tools.world.evaluate",
        description="clip4dm on a shapes world: FOIL (most_negative) and HAT (threshold, epsilon "
        "chosen on the val split); prints the metrics as JSON.",
    )
    parser.add_argument("--model", default="hf:shared/models/clip-shapes")
    parser.add_argument("--world", default="shared/world/test-set")
    parser.add_argument("--split", default="test")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    found = evaluate(
        args.model,
        args.world,
        split=args.split,
        val_split=args.val_split,
        batch_size=args.batch_size,
        device=args.device,
    )
    text = json.dumps(found, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
