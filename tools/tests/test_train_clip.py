"""``tools/train_clip.py``, the script that trained shared/models/clip-shapes: its model comes from
vl-core's public CLIP builders, the subset embedding writes back exactly, and a tiny run resumes
bit for bit and saves a model clip4dm loads (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
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


def test_fresh_captions_are_true_and_their_foils_false_of_every_kind() -> None:
    from tools.world.captions import holds
    from tools.world.generate import make_sample, scene_row

    kinds: set[str] = set()
    for index in range(40):
        sample = make_sample(0, "train", index, 128)
        scene = train_clip.row_scene(scene_row(sample))
        assert [s.box for s in scene.shapes] == [s.box for s in sample.scene.shapes]
        rng = np.random.default_rng(index)
        found = train_clip.fresh_caption(scene, rng, per_kind=1, size_word_p=1.0)
        assert found is not None
        caption, foils = found
        parsed = {c.text: c for c in _all_captions(scene)}
        assert caption in parsed
        assert holds(scene, parsed[caption])
        for foil in foils:  # one word changed, false in the scene
            assert sum(a != b for a, b in zip(caption.split(), foil.split(), strict=True)) == 1
            assert foil not in parsed
        kinds |= {_kind(caption, foil) for foil in foils}
    assert kinds == {"colour", "shape", "size", "relation"}


def _all_captions(scene: Any) -> list[Any]:
    """Every caption of the grammar that is true of ``scene``."""
    from tools.world.captions import RELATION_PHRASES, SIZE_WORDS, Caption, Mention, holds

    mentions = [
        Mention(s.colour, s.shape, size)
        for s in scene.shapes
        for size in (None, *([s.size] if s.size in SIZE_WORDS else []))
    ]
    out = []
    for a in mentions:
        for b in mentions:
            for relation in RELATION_PHRASES:
                caption = Caption(a, relation, b)
                if holds(scene, caption):
                    out.append(caption)
    return out


def _kind(caption: str, foil: str) -> str:
    from tools.world.scene import COLOURS, SHAPES

    (changed,) = [b for a, b in zip(caption.split(), foil.split(), strict=True) if a != b]
    if changed in COLOURS:
        return "colour"
    if changed in SHAPES:
        return "shape"
    return "size" if changed in ("small", "large") else "relation"


def test_pair_loss_is_each_images_softmax_over_its_caption_and_foils() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3 + 4, 8, generator=generator), dim=-1)
    owners = [0, 0, 2, 2]  # image 1 has no foils
    scale = torch.tensor(10.0)
    literal = []
    for b in range(3):
        own = [3 + f for f, o in enumerate(owners) if o == b]
        logits = scale * image[b] @ text[[b, *own]].T
        literal.append(torch.logsumexp(logits, 0) - logits[0])
    expected = torch.stack(literal).mean()
    torch.testing.assert_close(train_clip.pair_loss(image, text, owners, scale), expected)
