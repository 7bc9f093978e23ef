"""vl-core: the shared core of clip4dm and egtr.

Backbone loading, attention capture inside autograd, gradients, images and safe checkpoints.
The public names are imported lazily (`vl_core.lazy`), so ``import vl_core.cli`` or
``vl_core.files`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vl_core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Backbone": "vl_core.factory",
    "Capture": "vl_core.capture",
    "CaptureError": "vl_core.capture",
    "CheckpointError": "vl_core.checkpoints",
    "CheckpointMismatchError": "vl_core.checkpoints",
    "ClipBackbone": "vl_core.clip",
    "ClipTokenizer": "vl_core.tokens",
    "DEFAULT_MAX_PIXELS": "vl_core.images",
    "ImageDownloadError": "vl_core.images",
    "ImageDownloadTooLargeError": "vl_core.images",
    "ImageLoadError": "vl_core.images",
    "ImageNotFoundError": "vl_core.images",
    "ImageSource": "vl_core.images",
    "ImageTooLargeError": "vl_core.images",
    "LoadReport": "vl_core.checkpoints",
    "ModelNotAvailableError": "vl_core.hub",
    "ProbedMultiheadAttention": "vl_core.capture",
    "RenameRule": "vl_core.checkpoints",
    "TokenBatch": "vl_core.tokens",
    "UnsafeCheckpointError": "vl_core.checkpoints",
    "alongside": "vl_core.overlap",
    "available_families": "vl_core.factory",
    "batched_grad": "vl_core.gradients",
    "claim_threads": "vl_core.overlap",
    "describe_source": "vl_core.images",
    "environment_report": "vl_core._env",
    "load_backbone": "vl_core.factory",
    "load_clip": "vl_core.factory",
    "load_image": "vl_core.images",
    "load_images": "vl_core.images",
    "load_into": "vl_core.checkpoints",
    "load_state_dict": "vl_core.checkpoints",
    "partial_autograd": "vl_core.gradients",
    "register_backbone": "vl_core.factory",
    "rename_keys": "vl_core.checkpoints",
    "resolve_device": "vl_core.devices",
    "resolve_dtype": "vl_core.devices",
    "save_safetensors": "vl_core.checkpoints",
    "split_threads": "vl_core.overlap",
}

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Backbone",
    "Capture",
    "CaptureError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipBackbone",
    "ClipTokenizer",
    "ImageDownloadError",
    "ImageDownloadTooLargeError",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageSource",
    "ImageTooLargeError",
    "LoadReport",
    "ModelNotAvailableError",
    "ProbedMultiheadAttention",
    "RenameRule",
    "TokenBatch",
    "UnsafeCheckpointError",
    "__version__",
    "alongside",
    "available_families",
    "batched_grad",
    "claim_threads",
    "describe_source",
    "environment_report",
    "load_backbone",
    "load_clip",
    "load_image",
    "load_images",
    "load_into",
    "load_state_dict",
    "partial_autograd",
    "register_backbone",
    "rename_keys",
    "resolve_device",
    "resolve_dtype",
    "save_safetensors",
    "split_threads",
]

if TYPE_CHECKING:
    from vl_core._env import environment_report
    from vl_core.capture import Capture, CaptureError, ProbedMultiheadAttention
    from vl_core.checkpoints import (
        CheckpointError,
        CheckpointMismatchError,
        LoadReport,
        RenameRule,
        UnsafeCheckpointError,
        load_into,
        load_state_dict,
        rename_keys,
        save_safetensors,
    )
    from vl_core.clip import ClipBackbone
    from vl_core.devices import resolve_device, resolve_dtype
    from vl_core.factory import (
        Backbone,
        available_families,
        load_backbone,
        load_clip,
        register_backbone,
    )
    from vl_core.gradients import batched_grad, partial_autograd
    from vl_core.hub import ModelNotAvailableError
    from vl_core.images import (
        DEFAULT_MAX_PIXELS,
        ImageDownloadError,
        ImageDownloadTooLargeError,
        ImageLoadError,
        ImageNotFoundError,
        ImageSource,
        ImageTooLargeError,
        describe_source,
        load_image,
        load_images,
    )
    from vl_core.overlap import alongside, claim_threads, split_threads
    from vl_core.tokens import ClipTokenizer, TokenBatch

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
