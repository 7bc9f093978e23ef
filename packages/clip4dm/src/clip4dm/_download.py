"""The one line printed before a model is downloaded from the Hugging Face Hub.

`CLIP4DM` calls `announce_download` before loading a named model, so a first run of the default
model says that it is about to fetch some 600 MB (and how to use local files instead) rather than
sitting silent. Nothing is printed offline (``HF_HUB_OFFLINE=1``), for local files, or when the
model is already in the local Hugging Face cache (checked offline, `vl_core.hub.download_notice`).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["KNOWN_SIZES", "announce_download"]

KNOWN_SIZES: dict[str, str] = {
    "openai/clip-vit-base-patch32": "605 MB",
    "openai/clip-vit-large-patch14": "1.7 GB",
}
"""Download sizes of the hub models the documentation names (shown in the notice)."""


def _hub_repository(model: str) -> tuple[str, tuple[str, ...]] | None:
    """The Hugging Face Hub repository ``model`` would download from, and the files besides the
    weights that show it is cached; ``None`` for local files."""
    family, _, rest = model.partition(":")
    if family == "hf" and rest:
        return rest, ("config.json",)
    if family == "openclip" and "/" in rest and not Path(rest).expanduser().exists():
        arch, _, tag = rest.partition("/")
        try:
            import open_clip

            config = open_clip.get_pretrained_cfg(arch, tag) or {}
        except Exception:  # an unknown architecture or tag: the loader says so
            return None
        hub = str(config.get("hf_hub") or "").strip("/")
        return (hub, ()) if hub else None
    return None


def announce_download(model: str) -> str | None:
    """Print one line on stderr before the hub model ``model`` (a `CLIP4DM` model name) is
    downloaded, and return it; ``None`` (nothing printed) when nothing will be downloaded."""
    found = _hub_repository(model)
    if found is None:
        return None
    from vl_core.hub import download_notice

    repo, files = found
    notice = download_notice(repo, prog="clip4dm", size=KNOWN_SIZES.get(repo), files=files)
    if notice is not None:
        print(notice, file=sys.stderr, flush=True)
    return notice
