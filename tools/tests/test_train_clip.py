"""``tools/train_clip.py``, the script that trained shared/models/clip-shapes: its model comes from
vl-core's public CLIP builders, the subset embedding writes back exactly, and a tiny run resumes
bit for bit and saves a model clip4dm loads (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip4dm import CLIP4DM
from tools import train_clip

TINY = [
    "--train",
    "12",
    "--world-size",
    "64",
    "--batch",
    "4",
    "--image-size",
    "32",
    "--patch",
    "8",
    "--text-width",
    "32",
    "--vision-width",
    "32",
    "--text-layers",
    "3",
    "--vision-layers",
    "1",
    "--heads",
    "2",
    "--embed",
    "16",
    "--threads",
    "1",
    "--no-eval",
    "--log-every",
    "2",
]


def test_model_has_the_clip_vocabulary_and_is_seeded() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = train_clip.build_tokenizer()
    text = "a small red circle to the left of a blue square"
    ids = tokenizer(text)["input_ids"]
    assert ids == [49406, *SimpleTokenizer().encode(text), 49407]
    args = train_clip.parse_args(TINY)
    model = train_clip.build_model(args, tokenizer)
    text_config = model.config.text_config
    assert (text_config.vocab_size, text_config.bos_token_id, text_config.eos_token_id) == (
        49408,
        49406,
        49407,
    )
    assert (text_config.hidden_size, text_config.num_hidden_layers) == (32, 3)
    assert model.config.vision_config.patch_size == 8
    again = train_clip.build_model(args, tokenizer).state_dict()
    other = train_clip.build_model(train_clip.parse_args([*TINY, "--seed", "1"]), tokenizer)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again[key]), key
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in again.items())


def test_subset_embedding_matches_the_full_table_and_writes_back() -> None:
    full = torch.nn.Embedding(50, 4)
    subset = train_clip.SubsetEmbedding(full, [3, 7, 7, 20])
    ids = torch.tensor([[3, 20, 7]])
    assert torch.equal(subset(ids), full(ids).detach())
    with torch.no_grad():
        subset.weight.add_(1.0)
    with pytest.raises(ValueError, match="outside the training vocabulary"):
        subset(torch.tensor([[4]]))
    before = full.weight.detach().clone()
    table = subset.write_back()
    assert table is full
    assert torch.equal(table.weight[[3, 7, 20]], before[[3, 7, 20]] + 1.0)
    untrained = [i for i in range(50) if i not in (3, 7, 20)]
    assert before[untrained].abs().sum() > 0
    assert not table.weight[untrained].any()  # rows the world never uses are zeroed


@pytest.mark.slow
def test_train_script_resumes_exactly_and_saves_a_loadable_model(tmp_path: Path) -> None:
    """Tiny config: 4 steps straight == 2 steps + resume to 4; the release loads in clip4dm."""
    from safetensors.torch import load_file

    tiny = ["--world", str(tmp_path / "world"), *TINY]
    straight = tmp_path / "straight"
    assert (
        train_clip.main(
            [
                *tiny,
                "--steps",
                "4",
                "--work",
                str(straight / "work"),
                "--out",
                str(straight / "model"),
            ]
        )
        == 0
    )
    resumed = tmp_path / "resumed"
    common = ["--work", str(resumed / "work"), "--out", str(resumed / "model")]
    assert train_clip.main([*tiny, "--steps", "2", *common]) == 0
    assert train_clip.main([*tiny, "--steps", "4", *common]) == 0
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    # no temporary files left beside the checkpoint and caches (atomic writes)
    assert sorted(p.name for p in (resumed / "work").iterdir()) == [
        "checkpoint.pt",
        "pixels-12-32.pt",
        "summary.json",
    ]
    detector = CLIP4DM(f"hf:{straight / 'model'}", mode="most_negative", device="cpu")
    image = tmp_path / "world" / "images" / "train_000000.png"
    found = detector.detect(image, "a red circle above a blue square")
    assert [w.word for w in found.words] == ["a", "red", "circle", "above", "a", "blue", "square"]
    card = (straight / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "--steps 4" in card
