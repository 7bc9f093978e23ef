"""A user loads a CLIP, detects misaligned words and reads the typed results."""

from pathlib import Path

from clip4dm import CLIP4DM, Detection, WordScore

detector = CLIP4DM("hf:/models/clip-vit-base-patch32", mode="most_negative", layers=3)
result: Detection = detector.detect(Path("photo.jpg"), "a cup of coke")
words: list[WordScore] = result.words
lowest: WordScore = min(words, key=lambda w: w.score)
label: str = lowest.word
position: int = lowest.index
score: float = lowest.score
flagged: list[str] = result.misaligned_words
f_score: float = result.f_clip_score
clip_score: float = result.clip_score
ref: float | None = result.ref_clip_score
truncated: bool = result.truncated
payload: dict[str, object] = result.to_dict()

many: list[Detection] = detector.detect_batch(
    ["a.jpg", "b.jpg"], ["a dog", "a cat"], batch_size=16, references=[["a dog"], ["a cat"]]
)
totals: list[float] = [d.negative_sum for d in many]
