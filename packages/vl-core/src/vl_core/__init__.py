"""vl-core: the shared core of clip4dm and egtr.

Backbone loading, attention capture inside autograd, gradients, images and safe checkpoints.
"""

from __future__ import annotations

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
    ImageLoadError,
    ImageNotFoundError,
    ImageSource,
    ImageTooLargeError,
    describe_source,
    load_image,
    load_images,
)
from vl_core.timm_backbone import TimmBackbone, load_timm
from vl_core.tokens import ClipTokenizer, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Backbone",
    "Capture",
    "CaptureError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipBackbone",
    "ClipTokenizer",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageSource",
    "ImageTooLargeError",
    "LoadReport",
    "ModelNotAvailableError",
    "ProbedMultiheadAttention",
    "RenameRule",
    "TimmBackbone",
    "TokenBatch",
    "UnsafeCheckpointError",
    "__version__",
    "available_families",
    "batched_grad",
    "describe_source",
    "environment_report",
    "load_backbone",
    "load_clip",
    "load_image",
    "load_images",
    "load_into",
    "load_state_dict",
    "load_timm",
    "partial_autograd",
    "register_backbone",
    "rename_keys",
    "resolve_device",
    "resolve_dtype",
    "save_safetensors",
]
