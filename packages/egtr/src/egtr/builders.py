"""Named builders for the paper's models, torchvision style: ``weights=None`` means random init."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from egtr.configuration import EGTRConfig
from egtr.modeling import EGTRForSceneGraphGeneration


def egtr_visual_genome(
    *, weights: str | os.PathLike[str] | None = None, **config_overrides: Any
) -> EGTRForSceneGraphGeneration:
    """EGTR for Visual Genome (150 objects, 50 predicates).

    ``weights``: ``None`` (random init, nothing downloaded) or a local directory written by
    ``save_pretrained`` / ``egtr convert``.
    """
    return _build(EGTRConfig.visual_genome(**config_overrides), weights)


def egtr_open_images(
    *, weights: str | os.PathLike[str] | None = None, **config_overrides: Any
) -> EGTRForSceneGraphGeneration:
    """EGTR for Open Images V6 (601 objects, 30 predicates); ``weights`` as for VG."""
    return _build(EGTRConfig.open_images(**config_overrides), weights)


def _build(
    config: EGTRConfig, weights: str | os.PathLike[str] | None
) -> EGTRForSceneGraphGeneration:
    if weights is None:
        return EGTRForSceneGraphGeneration(config)
    path = Path(weights)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"weights={str(weights)!r} is not a local EGTR model directory (no config.json); "
            "nothing is downloaded — convert a released checkpoint with `egtr convert` first"
        )
    model = load_pretrained(path)
    loaded = model.config
    expected = (config.num_object_labels, config.num_rel_labels)
    if (loaded.num_object_labels, loaded.num_rel_labels) != expected:
        raise ValueError(
            f"{str(path)!r} holds a model with {loaded.num_object_labels} objects / "
            f"{loaded.num_rel_labels} predicates, expected {expected[0]} / {expected[1]}"
        )
    return model


def load_pretrained(path: str | os.PathLike[str]) -> EGTRForSceneGraphGeneration:
    """Load a model directory strictly: every weight present, readable and of the right shape.

    ``from_pretrained`` alone would random-initialise missing weights with only a warning; here
    unreadable weights and missing, unexpected or wrongly shaped keys raise ``ValueError``.
    """
    try:
        loaded: tuple[EGTRForSceneGraphGeneration, dict[str, Any]] = (
            EGTRForSceneGraphGeneration.from_pretrained(  # type: ignore[assignment]
                path, output_loading_info=True, ignore_mismatched_sizes=True
            )
        )
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"cannot read the EGTR model in {str(path)!r}: {exc}") from exc
    model, info = loaded
    problems = {
        kind: sorted(str(key) for key in info.get(kind) or ())
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems or info.get("error_msgs"):
        raise ValueError(
            f"{str(path)!r} does not hold weights for its config.json (a different model?): "
            f"{problems or info['error_msgs']}"
        )
    return model
