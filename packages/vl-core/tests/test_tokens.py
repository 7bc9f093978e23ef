"""The uniform CLIP tokenizer view: same ids from both families, fixed-length batches, token bytes."""

from __future__ import annotations

import pytest
import torch

from vl_core.clip import ClipBackbone
from vl_core.tokens import ClipTokenizer, byte_decoder

SOT, EOT = 49406, 49407  # <|startoftext|>, <|endoftext|> in the CLIP BPE vocabulary


def test_byte_decoder_is_gpt2_byte_alphabet() -> None:
    table = byte_decoder()
    assert len(table) == 256
    assert sorted(table.values()) == list(range(256))
    # printable ASCII stands for itself; the rest is shifted past 255 in byte order
    assert table["a"] == ord("a")
    assert table["~"] == ord("~")
    assert table["Ā"] == 0  # chr(256): the first non-printable byte
    assert table["Ġ"] == ord(" ")  # chr(288): GPT-2's well-known space marker
    assert table["Ã"] == 0xC3  # Latin-1 range stands for itself too


def test_both_families_give_identical_ids(
    hf_clip: ClipBackbone, openclip_clip: ClipBackbone, texts: tuple[str, ...]
) -> None:
    hf_tok, oc_tok = hf_clip.tokenizer, openclip_clip.tokenizer
    assert (hf_tok.sot_id, hf_tok.eot_id) == (oc_tok.sot_id, oc_tok.eot_id) == (SOT, EOT)
    hf_batch, oc_batch = hf_tok(texts), oc_tok(texts)
    assert torch.equal(hf_batch.eot, oc_batch.eot)
    for row, text in enumerate(texts):
        assert hf_tok.encode(text) == oc_tok.encode(text), text
        end = int(hf_batch.eot[row]) + 1
        assert torch.equal(hf_batch.ids[row, :end], oc_batch.ids[row, :end]), text
        assert hf_tok.normalize(text) == oc_tok.normalize(text), text


def test_known_segmentation(clip: ClipBackbone) -> None:
    tok = clip.tokenizer
    strings = [tok.token_string(i) for i in tok.encode("A photo of a cat...")]
    assert strings == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "...</w>"]
    strings = [tok.token_string(i) for i in tok.encode("don't T-shirt")]
    assert strings == ["don</w>", "'t</w>", "t</w>", "-</w>", "shirt</w>"]
    assert [tok.token_string(i) for i in tok.encode("café")] == ["cafÃ©</w>"]


def test_token_batch_layout(clip: ClipBackbone, texts: tuple[str, ...]) -> None:
    tok = clip.tokenizer
    batch = tok(texts)
    assert batch.ids.shape == (len(texts), 77)
    assert batch.ids.dtype == torch.long
    assert batch.truncated == (False,) * len(texts)
    expected_pad = EOT if clip.family == "hf" else 0  # HF pads with end-of-text, open_clip with 0
    assert tok.pad_id == expected_pad
    for row, text in enumerate(texts):
        content = tok.encode(text)
        eot = int(batch.eot[row])
        assert eot == len(content) + 1
        assert batch.ids[row].tolist() == [SOT, *content, EOT] + [expected_pad] * (76 - eot)


def test_truncation_at_context_length(clip: ClipBackbone) -> None:
    tok = clip.tokenizer
    fits, too_long, far_too_long = "a " * 75, "a " * 76, "word " * 200  # "a" is one token
    assert len(tok.encode(fits)) == 75
    batch = tok([fits, too_long, far_too_long, "short"])
    assert batch.truncated == (False, True, True, False)
    assert batch.eot.tolist() == [76, 76, 76, 2]
    assert batch.ids[2].tolist() == [SOT, *tok.encode(far_too_long)[:75], EOT]
    assert batch.ids[:3, -1].tolist() == [EOT] * 3


def test_single_string_is_rejected(clip: ClipBackbone) -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        clip.tokenizer("a photo")


def test_batch_moves_to_device(clip: ClipBackbone) -> None:
    batch = clip.tokenize(["a photo"])
    assert batch.ids.device == clip.device
    moved = batch.to("cpu")
    assert torch.equal(moved.ids, batch.ids)
    assert moved.truncated == batch.truncated


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("A photo of a cat...", "a photo of a cat..."),
        ('He said "hi."', 'he said "hi."'),
        ("a red T-shirt", "a red t-shirt"),
        ("don't stop", "don't stop"),
        ("CAFÉ au lait", "café au lait"),
        ("route 66 in 1999", "route 66 in 1999"),
        ("  two   spaces\tand a tab ", "two spaces and a tab"),
        ("emoji 🐱 ok", "emoji 🐱 ok"),
    ],
)
def test_token_bytes_cover_the_normalized_text(
    clip: ClipBackbone, text: str, normalized: str
) -> None:
    tok = clip.tokenizer
    assert tok.normalize(text) == normalized
    covered = b"".join(tok.token_bytes(i) for i in tok.encode(text))
    assert covered.decode("utf-8") == normalized.replace(" ", "")


def test_token_bytes_of_a_multibyte_split(clip: ClipBackbone) -> None:
    """A token may hold part of a UTF-8 sequence: "é" is two bytes, Ã© in the byte alphabet."""
    tok = clip.tokenizer
    pieces = [tok.token_bytes(i) for i in tok.encode("école")]
    assert pieces[0] == "é".encode()
    assert b"".join(pieces) == "école".encode()


def test_decode_round_trip(clip: ClipBackbone, texts: tuple[str, ...]) -> None:
    tok = clip.tokenizer
    batch = tok(texts)
    for row, text in enumerate(texts):
        ids = tok.encode(text)
        decoded = tok.decode(ids)
        assert decoded.replace(" ", "") == tok.normalize(text).replace(" ", "")
        assert tok.encode(decoded) == ids, (text, decoded)
        # special and padding ids are skipped
        assert tok.decode(batch.ids[row].tolist()) == decoded
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat"
    assert tok.decode(tok.encode("don't")) == "don 't"  # words are BPE words


def test_special_token_text_is_not_a_control_token(clip: ClipBackbone) -> None:
    """A literal "<|endoftext|>" in user text must not end the sequence (CLIP pools there)."""
    tok: ClipTokenizer = clip.tokenizer
    text = "<|endoftext|> a cat <|startoftext|>"
    ids = tok.encode(text)
    assert SOT not in ids
    assert EOT not in ids
    row = tok([text]).ids[0].tolist()
    assert row.index(EOT) == len(ids) + 1
