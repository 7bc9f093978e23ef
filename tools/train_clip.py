"""Train the small CLIP shipped as ``shared/models/clip-shapes`` on the shapes world (CPU).

Contrastive CLIP loss with hard negatives: each image's one-word foils (colour, shape, size or
relation word changed, see ``tools/world/captions.py``) join the batch's captions as extra
negatives in the image→text softmax. A plain CLIP can match "a red circle above a blue square"
by its bag of words; the foils make it ground every word, which is what CLIP4DM reads out.

An auxiliary loss speeds up the vision tower, trained from scratch on a CPU budget: heads (not
released) predict from the pooled image features which colour+shape kinds are present and where,
and from each patch token the colour and shape under it. The text tower has 3 layers, so
clip4dm's default read-out over the last 3 text layers covers all of it.

Usage (the shipped model, with the defaults below; see its MODEL_CARD.md for the exact run)::

    python -m tools.world --seed 0 --out /tmp/shapes-world --train 20000 --jobs 2
    python tools/train_clip.py --world /tmp/shapes-world --threads 1 --eval-at 2000,4000,6000

Without ``--world/scenes/train.jsonl`` the world is generated first (``--train`` images, seed
``--world-seed``). Checkpoints go to ``--work`` every ``--checkpoint-minutes``; re-running the same
command resumes. At the end the model is saved with ``save_pretrained`` (fp16 safetensors +
config, CLIP BPE tokenizer, image processor) and evaluated with clip4dm on ``--eval-world``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # make ``tools.world`` importable when run as a script
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from vl_core.files import atomic_save, atomic_write, write_json  # noqa: E402

TEMPLATE = "A photo depicts "  # clip4dm's default template; most training captions carry it


def build_model(args: argparse.Namespace, tokenizer: Any) -> Any:
    """A random ``CLIPModel`` with the real CLIP vocabulary size and a small width (seeded by
    ``--seed``)."""
    from transformers import CLIPModel

    from vl_core.testing import hf_clip_config

    config = hf_clip_config(
        tokenizer,
        text_width=args.text_width,
        text_layers=args.text_layers,
        text_heads=args.heads,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
        vision_heads=args.heads,
        image_size=args.image_size,
        patch_size=args.patch,
        embed_dim=args.embed,
    )
    torch.manual_seed(args.seed)
    return CLIPModel(config)


class SubsetEmbedding(torch.nn.Module):
    """The token embedding restricted to the ids the world uses (for training speed).

    The 49408-row CLIP table is kept; only ``ids`` rows train (the rest never occur in the
    world's text), and :meth:`write_back` copies them into the full table before saving and sets
    every other row to zero: a word the world never uses carries no meaning (only its position),
    and the release's 12 MB table of fp16 zeros compresses to almost nothing in git.
    """

    def __init__(self, full: torch.nn.Embedding, ids: Sequence[int]) -> None:
        super().__init__()
        self.full = full
        self.full.weight.requires_grad_(False)
        index = torch.tensor(sorted(set(ids)), dtype=torch.long)
        remap = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        remap[index] = torch.arange(len(index))
        self.register_buffer("index", index)
        self.register_buffer("remap", remap)
        self.weight = torch.nn.Parameter(full.weight.detach()[index].clone())

    def forward(self, input_ids: Tensor) -> Tensor:
        local = cast(Tensor, self.remap)[input_ids]
        if bool((local < 0).any()):
            raise ValueError("a token outside the training vocabulary reached the model")
        return F.embedding(local, self.weight)

    def write_back(self) -> torch.nn.Embedding:
        with torch.no_grad():
            self.full.weight.zero_()
            self.full.weight[cast(Tensor, self.index)] = self.weight.detach()
        return self.full


def build_tokenizer(source: str | None = None) -> Any:
    """CLIP's BPE tokenizer, built from open_clip's bundled vocabulary (as vl-core's test models
    are) or, with ``source``, loaded from a saved tokenizer directory."""
    if source:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(source)
    from vl_core.testing import clip_bpe_tokenizer

    return clip_bpe_tokenizer()


def build_processor(size: int) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def ensure_world(args: argparse.Namespace) -> Path:
    world = Path(args.world)
    if not (world / "scenes" / "train.jsonl").is_file():
        from tools.world.generate import write_world

        print(f"generating {args.train} training images into {world}", flush=True)
        write_world(
            world,
            seed=args.world_seed,
            counts={"train": args.train},
            size=args.world_size,
            jobs=args.jobs,
        )
    return world


def load_pixels(world: Path, rows: Sequence[dict[str, Any]], processor: Any, cache: Path) -> Tensor:
    """All training images through the shipped image processor (cached as fp16)."""
    if cache.is_file():
        pixels = cast(Tensor, torch.load(cache, weights_only=True))
        if pixels.shape[0] == len(rows):
            return pixels
    chunks = []
    for start in range(0, len(rows), 256):
        images = [
            Image.open(world / "images" / r["file_name"]).convert("RGB")
            for r in rows[start : start + 256]
        ]
        batch = processor(images=images, return_tensors="pt")["pixel_values"]
        chunks.append(batch.to(torch.float16))
    pixels = torch.cat(chunks)
    atomic_save(cache, lambda path: torch.save(pixels, path))
    return pixels


def row_scene(row: dict[str, Any]) -> Any:
    """The :class:`tools.world.scene.Scene` of a ``scenes/*.jsonl`` row (shapes only: captions
    and foils are decided on the boxes, so the background is a placeholder)."""
    from tools.world.scene import Background, Scene, Shape

    shapes = []
    for s in row["shapes"]:
        x, y, w, h = s["bbox"]
        shapes.append(
            Shape(s["shape"], s["colour"], s["size"], (x, y, x + w, y + h), tuple(s["rgb"]))
        )
    return Scene(int(row["width"]), Background("flat", (0, 0, 0), (0, 0, 0), 0.0, 0.0, 0), shapes)


def _sized(scene: Any, mention: Any, rng: np.random.Generator, p: float) -> Any:
    """``mention`` with its shape's size word added (probability ``p``) when it has none and
    the shape is small or large: the caption stays true."""
    from tools.world.captions import SIZE_WORDS

    if mention.size is not None or rng.random() >= p:
        return mention
    for shape in scene.shapes:
        same = shape.colour == mention.colour and shape.shape == mention.shape
        if same and shape.size in SIZE_WORDS:
            return replace(mention, size=shape.size)
    return mention


def fresh_caption(
    scene: Any, rng: np.random.Generator, per_kind: int, size_word_p: float = 0.0
) -> tuple[str, list[str]] | None:
    """A new true caption of ``scene`` and up to ``per_kind`` foils of EVERY foil kind it allows
    (the world's own grammar and foil rules, ``tools/world/captions.py``); with
    ``size_word_p``, small and large shapes are named with their size word more often."""
    from tools.world.captions import foil_candidates, true_captions

    found = true_captions(scene, rng, 1)
    if not found:
        return None
    caption = found[0]
    if size_word_p > 0:  # say the size of small and large shapes more often (size foils need it)
        caption = replace(
            caption,
            first=_sized(scene, caption.first, rng, size_word_p),
            second=_sized(scene, caption.second, rng, size_word_p),
        )
    by_kind: dict[str, list[str]] = {}
    for foil in foil_candidates(scene, caption):
        by_kind.setdefault(foil.kind, []).append(foil.caption.text)
    foils: list[str] = []
    for kind in sorted(by_kind):
        options = by_kind[kind]
        picks = rng.choice(len(options), size=min(per_kind, len(options)), replace=False)
        foils.extend(options[int(p)] for p in picks)
    return caption.text, foils


def sample_batch(
    rows: Sequence[dict[str, Any]],
    step: int,
    args: argparse.Namespace,
    scenes: Sequence[Any] | None = None,
) -> tuple[list[int], list[str], list[str], list[int]]:
    """Image indices, their captions, the foils and each foil's image (from the step's rng).

    With ``scenes`` (``--fresh-captions``), each image gets a newly sampled true caption and
    ``--foils-per-kind`` foils of every kind; otherwise one of its three stored captions and that
    caption's ``--foils`` stored foils."""
    rng = np.random.default_rng([args.seed, step])
    index = rng.choice(len(rows), size=args.batch, replace=False).tolist()
    captions: list[str] = []
    foils: list[str] = []
    owners: list[int] = []
    for b, i in enumerate(index):
        row = rows[i]
        prefix = TEMPLATE if rng.random() < args.template_p else ""
        fresh = (
            fresh_caption(scenes[i], rng, args.foils_per_kind, args.size_word_p)
            if scenes is not None
            else None
        )
        if fresh is not None:
            caption, own = fresh
        else:
            k = int(rng.integers(len(row["captions"])))
            caption = row["captions"][k]
            own = [foil["caption"] for foil in row["foils"][k][: args.foils]]
        captions.append(prefix + caption)
        for foil in own:
            foils.append(prefix + foil)
            owners.append(b)
    return index, captions, foils, owners


def world_token_ids(rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Every token id of the world's captions and foils (with and without the template)."""
    texts = {TEMPLATE}
    for row in rows:
        texts.update(row["captions"])
        texts.update(f["caption"] for foils in row["foils"] for f in foils)
    ids: set[int] = set()
    for batch in tokenizer(sorted(texts))["input_ids"]:
        ids.update(int(i) for i in batch)
    return sorted(ids)


def encode(model: Any, pixels: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised image and text embeddings, the vision tower's pooled output and its patch
    tokens (after the final layer norm)."""
    vision = model.vision_model(pixel_values=pixels)
    image = model.visual_projection(vision.pooler_output)
    text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    patches = model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1), vision.pooler_output, patches


@dataclass(frozen=True)
class SceneTargets:
    """Targets of the auxiliary heads, per training image: which colour+shape kinds are present
    ``[N, K]``, their box centres ``[N, K, 2]`` in 0..1, per patch the colour and the shape
    under the patch centre ``[N, P]`` (0 = background), and each present kind's size class."""

    present: Tensor
    centres: Tensor
    patch_colour: Tensor
    patch_shape: Tensor
    sizes: Tensor  # [N, K] size class (0 small, 1 medium, 2 large) of each present kind

    def to(self, device: torch.device) -> SceneTargets:
        return SceneTargets(*(getattr(self, f.name).to(device) for f in fields(self)))

    def select(self, index: list[int]) -> SceneTargets:
        return SceneTargets(*(getattr(self, f.name)[index] for f in fields(self)))


def scene_targets(rows: Sequence[dict[str, Any]], grid: int) -> SceneTargets:
    from tools.world.scene import COLOURS, SHAPES, SIZE_ORDER, shape_mask

    colours = list(COLOURS)
    kinds = {(c, s): k for k, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES)}
    present = torch.zeros(len(rows), len(kinds))
    centres = torch.zeros(len(rows), len(kinds), 2)
    patch_colour = torch.zeros(len(rows), grid * grid, dtype=torch.long)
    patch_shape = torch.zeros(len(rows), grid * grid, dtype=torch.long)
    sizes = torch.zeros(len(rows), len(kinds), dtype=torch.long)
    for n, row in enumerate(rows):
        size = row["width"]
        points = ((np.arange(grid) + 0.5) * size / grid).astype(int)
        for shape in row["shapes"]:  # drawing order: later shapes cover earlier ones
            k = kinds[(shape["colour"], shape["shape"])]
            x, y, w, h = shape["bbox"]
            present[n, k] = 1.0
            sizes[n, k] = SIZE_ORDER.index(shape["size"])
            centres[n, k] = torch.tensor([(x + w / 2) / size, (y + h / 2) / row["height"]])
            mask = shape_mask(shape["shape"], (x, y, x + w, y + h), size)
            covered = torch.from_numpy(mask[np.ix_(points, points)].reshape(-1) > 0.5)
            patch_colour[n][covered] = colours.index(shape["colour"]) + 1
            patch_shape[n][covered] = SHAPES.index(shape["shape"]) + 1
    return SceneTargets(present, centres, patch_colour, patch_shape, sizes)


class AuxHeads(torch.nn.Module):
    """Auxiliary heads on the vision tower (not released): from the pooled output, presence and
    centre of each colour+shape kind (and, with ``sizes``, its size class); from each patch
    token, the colour and shape under it."""

    def __init__(self, width: int, kinds: int, colours: int, shapes: int, sizes: int = 0) -> None:
        super().__init__()
        self.kinds, self.colours, self.sizes = kinds, colours, sizes
        self.pooled = torch.nn.Linear(width, kinds * (3 + sizes))
        self.patches = torch.nn.Linear(width, colours + 1 + shapes + 1)

    def forward(self, pooled: Tensor, patches: Tensor, target: SceneTargets) -> Tensor:
        out = self.pooled(pooled).view(len(pooled), self.kinds, 3 + self.sizes)
        presence = F.binary_cross_entropy_with_logits(out[..., 0], target.present)
        mask = target.present.unsqueeze(-1)
        where = ((torch.sigmoid(out[..., 1:3]) - target.centres) ** 2 * mask).sum()
        where = where / mask.sum().clamp(min=1)
        if self.sizes:
            logits = out[..., 3:][target.present > 0]
            if len(logits):
                presence = presence + F.cross_entropy(logits, target.sizes[target.present > 0])
        dense = self.patches(patches)
        split = self.colours + 1
        colour = F.cross_entropy(dense[..., :split].flatten(0, 1), target.patch_colour.flatten())
        shape = F.cross_entropy(dense[..., split:].flatten(0, 1), target.patch_shape.flatten())
        return presence + 10.0 * where + colour + shape


def contrastive_loss(
    model: Any, image: Tensor, text: Tensor, batch: int
) -> tuple[Tensor, dict[str, float]]:
    """Symmetric CLIP loss; texts ``batch:`` (foils) are extra negatives for image→text only."""
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * image @ text.T  # [B, B + foils]
    target = torch.arange(batch, device=logits.device)
    loss_i = F.cross_entropy(logits, target)
    loss_t = F.cross_entropy(logits[:, :batch].T, target)
    with torch.no_grad():
        acc = (logits.argmax(dim=1) == target).float().mean().item()
    return (loss_i + loss_t) / 2, {"acc_i2t": acc, "scale": float(scale.detach())}


def pair_loss(image: Tensor, text: Tensor, owners: Sequence[int], scale: Tensor) -> Tensor:
    """Each image against its own caption and its own foils only: cross-entropy with the caption
    as the answer (the one-word decision clip4dm's read-out needs), averaged over images."""
    batch = len(image)
    owner = torch.as_tensor(list(owners), dtype=torch.long, device=image.device)
    own = scale * (image * text[:batch]).sum(-1)  # [B]
    foil = scale * (image[owner] * text[batch:]).sum(-1)  # [F]
    # per image: logsumexp over {caption} + its foils, minus the caption's logit
    stacked = torch.full((batch, 1 + len(owner)), float("-inf"), device=image.device)
    stacked[:, 0] = own
    stacked[owner, 1 + torch.arange(len(owner), device=image.device)] = foil
    return (torch.logsumexp(stacked, dim=1) - own).mean()


def lr_at(step: int, args: argparse.Namespace) -> float:
    warmup = max(1, int(0.05 * args.steps))
    if step < warmup:
        return float(args.lr * (step + 1) / warmup)
    progress = (step - warmup) / max(1, args.steps - warmup)
    return float(args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))))


def make_optimizer(model: Any, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.dim() < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    world = ensure_world(args)
    rows = [json.loads(line) for line in (world / "scenes" / "train.jsonl").open(encoding="utf-8")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    processor = build_processor(args.image_size)
    tokenizer = build_tokenizer(args.tokenizer)
    t0 = time.time()
    pixels = load_pixels(world, rows, processor, work / f"pixels-{len(rows)}-{args.image_size}.pt")
    print(f"{len(rows)} images ready in {time.time() - t0:.0f}s", flush=True)

    model = build_model(args, tokenizer)
    model.config._attn_implementation = "sdpa"  # training only; clip4dm loads it eager
    vocab = world_token_ids(rows, tokenizer)
    embeddings = model.text_model.embeddings
    embeddings.token_embedding = SubsetEmbedding(embeddings.token_embedding, vocab)
    device = torch.device(args.device)
    from tools.world.scene import COLOURS, SHAPES

    targets = scene_targets(rows, args.image_size // args.patch).to(device)
    head = AuxHeads(
        args.vision_width,
        len(COLOURS) * len(SHAPES),
        len(COLOURS),
        len(SHAPES),
        sizes=3 if args.aux_size else 0,
    )
    scenes = [row_scene(row) for row in rows] if args.fresh_captions else None
    # one module for the optimizer and checkpoints; only ``clip`` is released
    trainable = torch.nn.ModuleDict({"clip": model, "aux": head}).to(device).train()
    pixels = pixels.to(device)
    optimizer = make_optimizer(trainable, args)
    checkpoint = work / "checkpoint.pt"
    state: dict[str, Any] = {"step": 0, "elapsed": 0.0, "log": [], "evals": []}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        trainable.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {
            "step": int(saved["step"]),
            "elapsed": float(saved["elapsed"]),
            "log": json.loads(saved["log"]),
            "evals": json.loads(saved.get("evals", "[]")),
        }
        print(f"resumed at step {state['step']}", flush=True)

    def save_checkpoint() -> None:
        saved = {
            "model": trainable.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": state["step"],
            "elapsed": state["elapsed"],
            "log": json.dumps(state["log"]),
            "evals": json.dumps(state["evals"]),
        }
        atomic_save(checkpoint, lambda path: torch.save(saved, path))

    # as released: the full token table, not the training subset
    n_params = (
        sum(p.numel() for p in model.parameters()) - embeddings.token_embedding.weight.numel()
    )
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    last_save = time.time()
    start = time.time() - state["elapsed"]
    running: list[float] = []
    while state["step"] < args.steps:
        step = state["step"]
        index, captions, foils, owners = sample_batch(rows, step, args, scenes)
        ids = tokenizer(captions + foils, padding="longest", return_tensors="pt")["input_ids"]
        ids = ids.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        image, text, pooled, patches = encode(model, pixels[index].float(), ids)
        loss, info = contrastive_loss(model, image, text, len(index))
        if args.pair_loss > 0 and owners:
            scale = model.logit_scale.exp().clamp(max=100.0)
            loss = loss + float(args.pair_loss) * pair_loss(image, text, owners, scale)
        if args.aux > 0:
            extra = head(pooled, patches, targets.select(index))
            loss = loss + float(args.aux) * extra
            info["aux"] = float(extra.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        running.append(float(loss.detach()))
        state["step"] = step + 1
        state["elapsed"] = time.time() - start
        if state["step"] % args.log_every == 0 or state["step"] == args.steps:
            entry = {
                "step": state["step"],
                "loss": float(np.mean(running)),
                "acc_i2t": round(info["acc_i2t"], 3),
                "scale": round(info["scale"], 2),
                "aux": round(info.get("aux", 0.0), 4),
                "lr": lr_at(step, args),
                "minutes": round(state["elapsed"] / 60, 2),
            }
            state["log"].append(entry)
            running = []
            print(json.dumps(entry), flush=True)
        if state["step"] in args.eval_at:
            paused = time.time()
            interim = work / f"release-{state['step']}"
            save_release(
                copy.deepcopy(model).cpu(),
                tokenizer,
                processor,
                interim,
                args.fp16,
                embeddings=True,
            )
            from tools.world.evaluate import evaluate

            found = evaluate(f"hf:{interim}", args.eval_world, device=args.device)
            print(json.dumps({"step": state["step"], "eval": found}), flush=True)
            state["evals"].append(
                {"step": state["step"], "minutes": round(state["elapsed"] / 60, 1), "eval": found}
            )
            trainable.train()
            start += time.time() - paused  # interim evaluations do not count as training time
        if time.time() - last_save > 60 * args.checkpoint_minutes:
            save_checkpoint()
            last_save = time.time()
    save_checkpoint()
    embeddings.token_embedding = embeddings.token_embedding.write_back()
    save_release(model, tokenizer, processor, Path(args.out), args.fp16)
    return {
        "steps": state["step"],
        "train_minutes": round(state["elapsed"] / 60, 1),
        "parameters": n_params,
        "images": len(rows),
        "trained_tokens": len(vocab),
        "log": state["log"],
        "evals": state["evals"],
    }


def save_release(
    model: Any, tokenizer: Any, processor: Any, out: Path, fp16: bool, *, embeddings: bool = False
) -> None:
    """``save_pretrained`` files of model (eager attention), tokenizer and image processor;
    ``embeddings``: first write a :class:`SubsetEmbedding` back into the full table."""
    out.mkdir(parents=True, exist_ok=True)
    if embeddings:
        text = model.text_model.embeddings
        text.token_embedding = text.token_embedding.write_back()
    model = model.eval()
    model.config._attn_implementation = "eager"
    if fp16:
        model = model.to(torch.float16)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def write_card(summary: dict[str, Any], out: Path) -> None:
    """MODEL_CARD.md and metrics.json next to the released weights."""
    cfg = summary["config"]
    metrics = summary.get("metrics")
    if metrics is not None:
        write_json(out / "metrics.json", metrics, indent=1)
    size_mb = (out / "model.safetensors").stat().st_size / 2**20
    lines = [
        "# clip-shapes: a small CLIP trained on the synthetic shapes world",
        "",
        "A tiny `transformers` `CLIPModel` that makes clip4dm's demo, tests and benchmark figures",
        "run offline: it knows a 6-colour × 5-shape world with spatial relations and size words",
        "(`tools/world`), nothing else. It is NOT a general CLIP and says nothing about real images.",
        "",
        'Load it like any HF CLIP: `CLIP4DM("hf:shared/models/clip-shapes")`.',
        "",
        "## Model",
        "",
        f"- `CLIPModel`, {summary['parameters'] / 1e6:.2f} M parameters, stored in fp16 "
        f"(`model.safetensors`, {size_mb:.1f} MiB; vl-core upcasts to fp32 on CPU).",
        f"- Text: real CLIP BPE vocabulary (49,408 tokens, built from open_clip's bundled "
        f"`bpe_simple_vocab_16e6.txt.gz`, saved as `tokenizer.json`), context 77, width "
        f"{cfg['text_width']}, {cfg['text_layers']} layers, {cfg['heads']} heads. Only the "
        f"{summary['trained_tokens']} token rows the world's text uses were trained; the other "
        "rows are zero (so the release compresses well in git).",
        f"- Vision: ViT, {cfg['image_size']}×{cfg['image_size']} input, patch {cfg['patch']}, "
        f"width {cfg['vision_width']}, {cfg['vision_layers']} layers, {cfg['heads']} heads; "
        f"`CLIPImageProcessor` resizes/crops to {cfg['image_size']} px with the OpenAI mean/std.",
        f"- Joint embedding: {cfg['embed']} dims. Eager attention (clip4dm reads the attention "
        "probabilities).",
        "",
        "## Data",
        "",
        f"- {summary['images']} training images of the shapes world, seed {cfg['world_seed']}, "
        f"{cfg['world_size']} px (`python -m tools.world --seed {cfg['world_seed']} --out "
        f"{cfg['world']} --train {summary['images']}`; generated into a temporary folder, not "
        "committed). "
        + (
            "At every step each image gets a newly sampled true caption in the world's grammar "
            "(a small or large shape named without its size word gets it with probability "
            f"{cfg['size_word_p']:.0%}, so size words are more frequent than in the test set) and "
            f"{cfg['foils_per_kind']} one-word foil(s) of every kind the caption allows (colour, "
            "shape, size or relation word changed, false in the image; the rules of "
            "`tools/world/captions.py`)."
            if cfg.get("fresh_captions")
            else "Each image has 3 true captions in the world's grammar and 2 one-word "
            "foils per caption (colour, shape, size or relation word changed, false in the image)."
        ),
        "- Evaluation: the fixed set `shared/world/test-set` (seed 1: 100 val + 300 test "
        "images, a different seed from training).",
        "",
        "## Training",
        "",
        f"- {summary['steps']} steps, batch {cfg['batch']} images; each image brings one caption "
        f"(with clip4dm's template `A photo depicts ` {100 * cfg['template_p']:.0f}% of "
        "the time) and its foils.",
        "- Loss: CLIP's symmetric contrastive loss, where the image→text softmax runs over the "
        "batch's captions PLUS all foils (hard negatives; text→image over the captions only). "
        "A plain CLIP can match a caption by its bag of words; the one-word foils force every "
        "word to count, which is what CLIP4DM's gradient×attention read-out localises."
        + (
            f" Plus (weight {cfg['pair_loss']}) each image against its own caption and its own "
            "foils only: the one-word decision, without the easy negatives of other images."
            if cfg.get("pair_loss")
            else ""
        ),
        f"- Auxiliary loss (weight {cfg['aux']}) to speed up the vision tower trained from "
        "scratch on a CPU budget: heads that are not released predict, from the pooled image "
        "features, which colour+shape kinds are present and their centres, and from each patch "
        "token the colour and shape under it (ground truth from the world's scene files)"
        + (", and each present shape's size class." if cfg.get("aux_size") else "."),
        f"- The text tower has {cfg['text_layers']} layers so that clip4dm's default read-out "
        "(the last 3 text layers) covers all of it: in a 4-layer trial the words were mixed into "
        "the end-of-text token mostly in the first layer, which the last-3 read-out misses.",
        f"- AdamW (β = 0.9, 0.98; weight decay {cfg['weight_decay']} on matrices), peak lr "
        f"{cfg['lr']}, 5% warm-up then cosine, gradient clipping 1.0, learnable logit scale "
        "(≤ 100), seed " + str(cfg["seed"]) + ".",
        f"- Hardware: CPU only, torch threads = {cfg['threads'] or 'default'} (the 2-core "
        f"development machine). Training wall time {summary['train_minutes']} min "
        f"(total with data loading and evaluation {summary['wall_minutes']} min).",
        "",
        "Exact command:",
        "",
        "```bash",
        summary["command"],
        "```",
        "",
    ]
    if metrics is not None:
        lines += card_metrics(metrics)
    if summary.get("evals"):
        lines += card_learning_curve(summary)
    lines += card_limitations(metrics)
    lines.append("")
    atomic_write(out / "MODEL_CARD.md", "\n".join(lines))


def card_metrics(metrics: dict[str, Any]) -> list[str]:
    """The card's ``## Metrics`` section (lines) from ``metrics.json``'s content (what
    `tools.world.evaluate.evaluate` returns)."""
    foil, hat = metrics["foil"], metrics["hat"]
    kinds = ", ".join(f"{k} {_pct(v)}" for k, v in foil["LA_by_kind"].items())
    return [
        "## Metrics (clip4dm on `shared/world/test-set`, test split)",
        "",
        "Reproduce: `python -m tools.world.evaluate --model hf:shared/models/clip-shapes "
        "--world shared/world/test-set` (prints this JSON; also in `metrics.json`).",
        "",
        f"FOIL format, `most_negative` mode: {foil['captions']} captions "
        f"({foil['foils']} foils, one word changed).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| LA (lowest word == foil word) | {_pct(foil['LA'])} |",
        f"| LA, exact position | {_pct(foil['LA_exact'])} |",
        f"| LA by foil kind | {kinds} |",
        f"| chance LA (1 / words) | {_pct(foil['LA_chance'])} |",
        f"| AP, F-CLIPScore (aligned vs foil) | {_pct(foil['AP_F-CLIPScore'])} |",
        f"| AP, CLIPScore alone | {_pct(foil['AP_CLIPScore'])} |",
        "",
        f"HAT format, `threshold` mode, epsilon = {hat['epsilon']:.0e} (chosen on the val "
        f"split by HAT LA, grid in `tools/world/evaluate.py`): {hat['captions']} captions, "
        f"{hat['hallucinated']} with 1–2 hallucinated words.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| LA (lowest phrase ⊂ hallucinated words) | {_pct(hat['LA'])} |",
        f"| LA, exact positions | {_pct(hat['LA_exact'])} |",
        f"| chance (hallucinated words / words) | {_pct(hat['LA_chance'])} |",
        f"| AP, −F-CLIPScore (hallucinated = positive) | {_pct(hat['AP_F-CLIPScore'])} |",
        f"| AP, −CLIPScore alone | {_pct(hat['AP_CLIPScore'])} |",
        "",
    ]


def card_learning_curve(summary: dict[str, Any]) -> list[str]:
    """The card's ``## Learning curve`` section: the interim evaluations (``--eval-at``) and the
    final one, on the same test split."""
    rows = list(summary["evals"])
    if summary.get("metrics") is not None:
        rows.append(
            {
                "step": summary["steps"],
                "minutes": summary["train_minutes"],
                "eval": summary["metrics"],
            }
        )
    lines = [
        "## Learning curve",
        "",
        "FOIL LA and pairwise accuracy on the test split during training (`--eval-at`; minutes "
        "of training, evaluations not counted):",
        "",
        "| step | minutes | LA | LA colour / shape / relation / size | pairwise colour / shape / "
        "relation / size | AP F-CLIPScore / CLIPScore | HAT LA |",
        "|---|---|---|---|---|---|---|",
    ]
    kinds = ("colour", "shape", "relation", "size")
    for row in rows:
        foil, hat = row["eval"]["foil"], row["eval"]["hat"]
        la = " / ".join(_pct(foil["LA_by_kind"].get(k)) for k in kinds)
        pair = " / ".join(_pct(foil.get("pairwise_by_kind", {}).get(k)) for k in kinds)
        lines.append(
            f"| {row['step']} | {row['minutes']} | {_pct(foil['LA'])} | {la} | {pair} | "
            f"{_pct(foil['AP_F-CLIPScore'])} / {_pct(foil['AP_CLIPScore'])} | {_pct(hat['LA'])} |"
        )
    return [*lines, ""]


def card_limitations(metrics: dict[str, Any] | None) -> list[str]:
    """The card's ``## Limitations`` section (lines); with ``metrics``, also where the
    localisation is weak and the pairwise figures that explain why."""
    lines = [
        "## Limitations",
        "",
        "- Words outside the world's vocabulary map to untrained embeddings. Relations are binary "
        "spatial ones (left/right/above/below) between two named shapes; captions name shapes "
        "by colour, shape and optionally size.",
    ]
    if metrics is not None:
        by_kind = metrics["foil"]["LA_by_kind"]
        strong = [k for k, v in by_kind.items() if v >= 0.5]
        weak = [k for k, v in by_kind.items() if v < 2 * metrics["foil"]["LA_chance"]]
        pairwise = metrics["foil"].get("pairwise_by_kind", {})
        seen = [k for k in weak if pairwise.get(k, 0.0) >= 0.8]
        unseen = [k for k in weak if k not in seen]
        text = (
            "- Localisation is uneven across foil kinds: the model localises "
            f"{' and '.join(strong) or 'no'} foils well, {' and '.join(weak) or 'no'} foils "
            "near or below chance (1 / words). How often the CLIP scores the original caption "
            "above its one-word foil is "
            + ", ".join(f"{k} {_pct(v)}" for k, v in pairwise.items())
            + " (50% = it cannot tell them apart; `pairwise_by_kind` in `metrics.json`)."
        )
        if unseen:
            text += (
                f" For {' and '.join(unseen)} foils the CLIP itself is the limit, not the "
                "read-out: clip4dm can only localise a difference the CLIP sees."
            )
        if seen:
            text += (
                f" {' and '.join(seen).capitalize()} foils the CLIP does tell apart, but the "
                "read-out does not land on the changed word: the lowest word is a colour or "
                "shape word. The end-of-text token, where gradient×attention is read, takes "
                "that word's information in through the shapes' colour and noun tokens rather "
                "than from the word itself, so the attribution goes to them."
            )
        lines.append(text)
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--world", default="/tmp/shapes-world", help="training world (generated if absent)"
    )
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--world-size", type=int, default=128)
    p.add_argument("--train", type=int, default=20000, help="images to generate if needed")
    p.add_argument("--out", default=str(ROOT / "shared" / "models" / "clip-shapes"))
    p.add_argument("--work", default="/tmp/clip-shapes-work", help="checkpoints and caches")
    p.add_argument("--eval-world", default=str(ROOT / "shared" / "world" / "test-set"))
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--foils",
        type=int,
        default=2,
        help="stored hard-negative foils per image (without --fresh-captions)",
    )
    p.add_argument(
        "--fresh-captions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample a new true caption per image and step, with foils of every kind",
    )
    p.add_argument("--foils-per-kind", type=int, default=1, help="with --fresh-captions")
    p.add_argument(
        "--size-word-p",
        type=float,
        default=0.5,
        help="with --fresh-captions: extra chance to name a small/large shape's size",
    )
    p.add_argument(
        "--pair-loss",
        type=float,
        default=1.0,
        help="weight of the caption-vs-own-foils loss (0 = off)",
    )
    p.add_argument(
        "--aux-size",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the auxiliary head also predicts each shape's size class",
    )
    p.add_argument("--template-p", type=float, default=0.75)
    p.add_argument(
        "--aux",
        type=float,
        default=5.0,
        help="weight of the auxiliary scene head on the vision tower (0 = off)",
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store the released weights in fp16 (clip4dm upcasts on CPU)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer", help="saved CLIP tokenizer dir (default: build from open_clip)")
    p.add_argument("--jobs", type=int, default=1, help="processes generating the world")
    p.add_argument(
        "--eval-at",
        type=lambda v: {int(x) for x in v.split(",") if x},
        default=set(),
        help="comma-separated steps at which to save and evaluate an interim model",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python tools/train_clip.py " + " ".join(sys.argv[1:] if argv is None else argv)
    wall = time.time()
    summary = train(args)
    summary["command"] = command
    summary["config"] = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    if not args.no_eval:
        from tools.world.evaluate import evaluate

        t0 = time.time()
        summary["metrics"] = evaluate(f"hf:{args.out}", args.eval_world, device=args.device)
        summary["eval_minutes"] = round((time.time() - t0) / 60, 1)
    summary["wall_minutes"] = round((time.time() - wall) / 60, 1)
    write_json(Path(args.work, "summary.json"), summary, indent=1)
    write_card(summary, Path(args.out))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
