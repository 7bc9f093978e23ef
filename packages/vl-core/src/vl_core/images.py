"""One image loader for every input the models accept, always returning an RGB PIL image.

Sources: file paths, ``http(s)://`` URLs, encoded bytes, binary file objects, PIL images, numpy
arrays (HxW or HxWxC) and torch tensors (CxHxW, the torchvision layout). EXIF orientation is
applied, every mode is converted to 8-bit RGB (transparent pixels composited over white), and a
pixel-count guard checked on the header refuses decompression bombs before their pixel data is
decoded. URLs are downloaded with a time limit and a size limit enforced while reading, then decoded
exactly like bytes.
"""

from __future__ import annotations

import http.client
import io
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable
from typing import IO, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TIMEOUT",
    "ImageDownloadError",
    "ImageDownloadTooLargeError",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageSource",
    "ImageTooLargeError",
    "describe_source",
    "is_url",
    "load_image",
    "load_images",
]

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Default pixel-count limit: Pillow's own warning threshold (about 0.25 GB as 8-bit RGB)."""

DEFAULT_TIMEOUT: float = 30.0
"""Default time limit of a URL download, in seconds (see `load_image`)."""

DEFAULT_MAX_BYTES: int = 64 * 1024 * 1024
"""Default size limit of a URL download: 64 MiB of encoded image data."""

ImageSource: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | IO[bytes]
    | Image.Image
    | npt.NDArray[np.generic]
    | torch.Tensor
)
"""Everything `load_image` accepts; ``bytes`` are encoded image data, never a path; a ``str``
starting with ``http://`` or ``https://`` is a URL, any other ``str`` a path."""

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_URL_SCHEMES = ("http://", "https://")
_CHUNK = 64 * 1024


class ImageLoadError(ValueError):
    """An image source could not be read or decoded; the message names the source and reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot load image {source}: {reason}")
        self.source = source
        self.reason = reason


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """The image path does not exist (also a FileNotFoundError, for callers catching that)."""


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than allowed: refused before decoding (decompression-bomb guard)."""

    def __init__(self, source: str, pixels: int | None, limit: int | None) -> None:
        count = "an unknown number of" if pixels is None else str(pixels)
        bound = (
            "Pillow's global limit PIL.Image.MAX_IMAGE_PIXELS"
            if limit is None
            else f"max_pixels={limit}"
        )
        super().__init__(source, f"image has {count} pixels, more than {bound}")
        self.pixels = pixels
        self.limit = limit


class ImageDownloadError(ImageLoadError):
    """A URL could not be downloaded (HTTP error status, refused connection, time limit, redirect
    to a non-HTTP URL, ...); the message names the URL. ``status`` is the HTTP status code when
    the server sent one, else ``None``."""

    def __init__(self, source: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(source, reason)
        self.status = status


class ImageDownloadTooLargeError(ImageDownloadError):
    """A URL's response is larger than ``max_bytes``: refused from its declared length, or stopped
    as soon as more than ``limit`` bytes have arrived. ``declared`` is the Content-Length the
    server sent (``None`` when it sent none)."""

    def __init__(self, source: str, limit: int, declared: int | None) -> None:
        said = "" if declared is None else f" (it declares {declared} bytes)"
        super().__init__(source, f"response is larger than max_bytes={limit}{said}")
        self.limit = limit
        self.declared = declared


def is_url(source: object) -> bool:
    """True when ``source`` is a string starting with ``http://`` or ``https://`` (any case):
    the sources `load_image` downloads. Path objects are never URLs."""
    return isinstance(source, str) and source[:8].lower().startswith(_URL_SCHEMES)


def describe_source(source: object) -> str:
    """A short human-readable name of an image source, used in error messages.

    Returns the ``repr`` of a path or URL (a URL's user name and password replaced by ``***``),
    or a ``<...>`` summary of an in-memory source (its size, shape or dtype).
    """
    if is_url(source):
        assert isinstance(source, str)
        return repr(_redact(source))
    if isinstance(source, str | os.PathLike):
        return repr(os.fspath(source))
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<bytes: {memoryview(source).nbytes} bytes>"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        origin = f" from {name!r}" if name else ""
        return f"<PIL image mode={source.mode} size={source.width}x{source.height}{origin}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={tuple(source.shape)} dtype={source.dtype}>"
    if isinstance(source, torch.Tensor):
        return f"<tensor shape={tuple(source.shape)} dtype={source.dtype}>"
    name = getattr(source, "name", None)
    if isinstance(name, str | bytes | os.PathLike):
        return f"<file {os.fsdecode(name)!r}>"
    return f"<{type(source).__name__} object>"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Load ``source`` as a new 8-bit RGB image, refusing more than ``max_pixels`` pixels.

    Encoded sources (paths, URLs, bytes, file objects) are checked against ``max_pixels`` from the
    header, before decoding; ``None`` disables this guard, though Pillow's own (global) bomb limit
    still applies. Pixel sources (PIL images, arrays, tensors) are checked the same way, so one
    limit means one thing in a pipeline. Alpha is composited over white; EXIF orientation is
    applied.

    A string starting with ``http://`` or ``https://`` is downloaded (standard library only; the
    proxy settings of the environment apply; redirects are followed to http(s) URLs only). No
    single wait for the server (connecting, or the next piece of data) may exceed ``timeout``
    seconds, and the download is abandoned once it has run past ``timeout`` seconds in all
    (checked between reads). A response that declares more than ``max_bytes`` bytes is refused
    before its body is read, and one without a declared length is cut off as soon as more than
    ``max_bytes`` bytes arrive. The bytes are then decoded exactly like a ``bytes`` source.

    Arrays are HxW, HxWx1, HxWx3 or HxWx4 with dtype uint8, uint16 (0..65535, scaled to 8 bits),
    bool, or float in [0, 1]. Tensors use the torchvision layout CxHxW (or HxW) with C in 1, 3, 4 and
    dtype uint8, bool or float in [0, 1].

    Returns a new RGB image. Raises `ImageLoadError` (a ValueError) on any failure of the source:
    `ImageNotFoundError` for a missing file, `ImageTooLargeError` over ``max_pixels``,
    `ImageDownloadError` when a URL cannot be fetched (`ImageDownloadTooLargeError` over
    ``max_bytes``); a plain ``ValueError`` for a ``timeout`` or ``max_bytes`` that is not positive.
    """
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not (number and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    name = describe_source(source)
    if is_url(source):
        assert isinstance(source, str)
        data = _download(source, name, timeout=float(timeout), max_bytes=max_bytes)
        return _to_rgb(_open_encoded(io.BytesIO(data), name, max_pixels), name)
    if isinstance(source, torch.Tensor):
        return _to_rgb(_from_array(_tensor_to_hwc(source, name), name, max_pixels), name)
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source, name, max_pixels), name)
    if isinstance(source, Image.Image):
        _check_size(source.size, name, max_pixels)
        _decode(source, name)
        image = _orient(source, name, stacklevel=3)
    elif isinstance(source, str | os.PathLike):
        try:
            with open(source, "rb") as handle:
                image = _open_encoded(handle, name, max_pixels)
        except FileNotFoundError as exc:
            raise ImageNotFoundError(name, "no such file") from exc
        except IsADirectoryError as exc:
            raise ImageLoadError(name, "is a directory, not an image file") from exc
        except OSError as exc:
            raise ImageLoadError(name, f"cannot open file ({exc.strerror or exc})") from exc
    elif isinstance(source, bytes | bytearray | memoryview):
        image = _open_encoded(io.BytesIO(source), name, max_pixels)
    elif callable(getattr(source, "read", None)):
        image = _open_encoded(source, name, max_pixels)
    else:
        raise ImageLoadError(name, f"unsupported source type {type(source).__name__}")
    return _to_rgb(image, name)


def load_images(
    sources: Iterable[ImageSource],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Image.Image]:
    """Load each source with `load_image` (same keywords); returns the images in order.

    Raises what `load_image` raises, for the first source that fails, naming it.
    """
    return [
        load_image(source, max_pixels=max_pixels, timeout=timeout, max_bytes=max_bytes)
        for source in sources
    ]


# -- URLs -----------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (error messages go to logs)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _user_agent() -> str:
    from vl_core import __version__

    return f"vl-core/{__version__} (image loader; Python-urllib)"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) URLs only (urllib also follows them to ftp)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_url(newurl):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to a non-HTTP URL {newurl!r} refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _declared_length(headers: http.client.HTTPMessage) -> int | None:
    """The Content-Length header as an integer, ``None`` when absent or malformed."""
    value = headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _download(url: str, name: str, *, timeout: float, max_bytes: int) -> bytes:
    """The body of ``url``, read within ``timeout`` and ``max_bytes`` (see `load_image`)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        url, headers={"User-Agent": _user_agent(), "Accept": "image/*, */*;q=0.5"}
    )
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = _declared_length(response.headers)
            if declared is not None and declared > max_bytes:
                raise ImageDownloadTooLargeError(name, max_bytes, declared)
            chunks: list[bytes] = []
            received = 0
            while True:
                if time.monotonic() > deadline:
                    raise ImageDownloadError(
                        name, f"timed out: the download took longer than {timeout:g} s"
                    )
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise ImageDownloadTooLargeError(name, max_bytes, declared)
                chunks.append(chunk)
    except ImageDownloadError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ImageDownloadError(name, f"HTTP {exc.code} {exc.reason}", status=exc.code) from exc
    except urllib.error.URLError as exc:
        raise ImageDownloadError(name, _network_reason(exc.reason, timeout)) from exc
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        raise ImageDownloadError(name, _network_reason(exc, timeout)) from exc
    return b"".join(chunks)


def _network_reason(reason: object, timeout: float) -> str:
    """A short reason for a failed connection or read (``timed out`` for a time limit)."""
    if isinstance(reason, TimeoutError):
        return f"timed out: no answer within {timeout:g} s"
    if isinstance(reason, http.client.IncompleteRead):
        return "the connection closed before the whole response arrived"
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot download ({reason.strerror})"
    return f"cannot download ({reason})"


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """Raise `ImageTooLargeError` when width*height exceeds the limit."""
    pixels = size[0] * size[1]
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLargeError(name, pixels, max_pixels)


def _bomb_error(exc: Exception, name: str, max_pixels: int | None) -> ImageTooLargeError:
    """Translate Pillow's decompression-bomb error or warning into `ImageTooLargeError`."""
    match = _PIL_BOMB_PIXELS.search(str(exc))
    pixels = int(match.group(1)) if match else None
    ours = max_pixels is not None and pixels is not None and pixels > max_pixels
    return ImageTooLargeError(name, pixels, max_pixels if ours else None)


def _decode(image: Image.Image, name: str) -> None:
    """Force the full decode now, so truncated or corrupt data fails here, with the source named."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, name, None) from exc
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, zlib.error, ...
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from exc


def _open_encoded(stream: IO[bytes], name: str, max_pixels: int | None) -> Image.Image:
    """Read the header, check the pixel count, then decode and orient (while the file is open)."""
    try:
        image = Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, name, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(name, "not a recognised image format") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageLoadError(name, f"unreadable image header ({exc})") from exc
    _check_size(image.size, name, max_pixels)
    _decode(image, name)
    return _orient(image, name, stacklevel=4)


def _orient(image: Image.Image, name: str, *, stacklevel: int) -> Image.Image:
    """A copy of ``image`` turned upright per its EXIF orientation; broken EXIF only warns."""
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:
        warnings.warn(
            f"{name}: EXIF orientation ignored, EXIF data unreadable ({exc})",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        return image.copy()


def _composite_over_white(image: Image.Image) -> Image.Image:
    """Flatten an image with transparency onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; 16-bit data is rescaled, not clipped."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_scale_uint16(np.asarray(image)))
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageLoadError(
                name, "32-bit integer pixels outside 0..65535 have no defined 8-bit mapping"
            )
        return _grey_to_rgb(_scale_uint16(values))
    if mode == "F":  # Pillow's float convention: the 0..255 scale (as from convert("F"))
        floats = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return _grey_to_rgb(np.clip(np.rint(floats), 0, 255).astype(np.uint8))
    try:
        if image.has_transparency_data:
            return _composite_over_white(image)
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(name, f"cannot convert mode {mode!r} to RGB ({exc})") from exc


def _grey_to_rgb(grey: npt.NDArray[np.uint8]) -> Image.Image:
    """An RGB image whose three channels all equal the 8-bit greyscale ``grey``."""
    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))


def _scale_uint16(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Map 0..65535 linearly onto 0..255 with rounding (65535 -> 255, 32768 -> 128)."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _tensor_to_hwc(tensor: torch.Tensor, name: str) -> npt.NDArray[np.generic]:
    """A CxHxW (or HxW) tensor as an HxWxC (or HxW) numpy array."""
    data = tensor.detach().cpu()
    if data.ndim == 3:
        if data.shape[0] not in (1, 3, 4):
            hint = (
                " (looks like HxWxC: use tensor.permute(2, 0, 1))"
                if data.shape[-1] in (1, 3, 4)
                else ""
            )
            raise ImageLoadError(name, f"tensors must be CxHxW with C in 1, 3, 4{hint}")
        data = data.permute(1, 2, 0)
    elif data.ndim != 2:
        raise ImageLoadError(name, "tensors must be CxHxW or HxW (index a batch first)")
    if data.dtype.is_floating_point and data.dtype not in (torch.float32, torch.float64):
        data = data.float()
    if data.dtype not in (torch.uint8, torch.bool, torch.float32, torch.float64):
        raise ImageLoadError(
            name, f"unsupported tensor dtype {data.dtype} (use uint8, bool or float)"
        )
    array: npt.NDArray[np.generic] = data.contiguous().numpy()
    return array


def _from_array(array: npt.NDArray[np.generic], name: str, max_pixels: int | None) -> Image.Image:
    """An RGB image from an HxW / HxWxC array, after validating shape, dtype and value range."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] not in (3, 4):
        hint = (
            " (looks like CxHxW: use array.transpose(1, 2, 0))"
            if array.shape[0] in (1, 3, 4)
            else ""
        )
        raise ImageLoadError(name, f"arrays must be HxW or HxWxC with C in 1, 3, 4{hint}")
    if array.ndim not in (2, 3):
        raise ImageLoadError(name, "arrays must be HxW or HxWxC (index a batch first)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(name, "empty array")
    _check_size((array.shape[1], array.shape[0]), name, max_pixels)
    pixels = _to_uint8(array, name)
    return Image.fromarray(np.ascontiguousarray(pixels))  # 2-D: L, 3 channels: RGB, 4: RGBA


def _to_uint8(array: npt.NDArray[np.generic], name: str) -> npt.NDArray[np.uint8]:
    """Bring a supported dtype onto the 0..255 uint8 scale."""
    kind = array.dtype
    if kind == np.uint8:
        return array.astype(np.uint8, copy=False)
    if kind == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if kind.kind == "u" and kind.itemsize == 2:  # uint16 in either byte order
        return _scale_uint16(array)
    if np.issubdtype(kind, np.floating):
        floats = array.astype(np.float64)
        if not np.isfinite(floats).all():
            raise ImageLoadError(name, "float pixels contain NaN or infinity")
        low, high = float(floats.min()), float(floats.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(
                name, f"float pixels must lie in [0, 1], found [{low:.4g}, {high:.4g}]"
            )
        return np.rint(floats * 255.0).astype(np.uint8)
    raise ImageLoadError(name, f"unsupported array dtype {kind} (use uint8, uint16, bool or float)")
