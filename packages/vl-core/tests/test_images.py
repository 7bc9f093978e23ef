"""load_image on real files of every mode, in-memory sources, URLs served on 127.0.0.1, and broken
or oversized inputs."""

from __future__ import annotations

import contextlib
import http.server
import io
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from vl_core.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageDownloadError,
    ImageDownloadTooLargeError,
    ImageLoadError,
    ImageNotFoundError,
    ImageTooLargeError,
    describe_source,
    is_url,
    load_image,
    load_images,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """One pixel as a tuple of ints (mypy-friendly wrapper around getpixel)."""
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return tuple(int(v) for v in value)


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def stored_mode(path: Path) -> str:
    """The mode Pillow reports for the file itself (to prove the test exercises that mode)."""
    with Image.open(path) as image:
        return image.mode


def random_png(path: Path, size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


# --- real files, one per mode -------------------------------------------------------------------


def test_palette_png_converts_to_palette_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 3), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.putpixel((2, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path)
    assert stored_mode(path) == "P"
    result = load_image(path)
    assert_rgb(result, (4, 3))
    assert pixel(result, (0, 0)) == RED
    assert pixel(result, (2, 1)) == BLUE


def test_palette_png_with_transparency_composites_over_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 3), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.putpixel((2, 1), 1)
    path = tmp_path / "palette_transparent.png"
    image.save(path, transparency=0)  # palette entry 0 (red) is fully transparent
    with Image.open(path) as opened:
        assert opened.mode == "P"
        assert "transparency" in opened.info
    result = load_image(str(path))
    assert_rgb(result, (4, 3))
    assert pixel(result, (0, 0)) == WHITE
    assert pixel(result, (2, 1)) == BLUE


def test_rgba_png_composites_alpha_over_white(tmp_path: Path) -> None:
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    array[0, 0] = (255, 0, 0, 255)  # opaque red
    array[0, 1] = (0, 0, 0, 0)  # fully transparent black
    array[0, 2] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "rgba.png"
    Image.fromarray(array).save(path)
    result = load_image(path)
    assert_rgb(result, (3, 2))
    assert pixel(result, (0, 0)) == RED
    assert pixel(result, (1, 0)) == WHITE
    assert close_to(pixel(result, (2, 0)), (127, 127, 127), 1)


def test_la_png_composites_over_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (2, 2), (0, 128)).save(path)
    assert stored_mode(path) == "LA"
    result = load_image(path)
    assert_rgb(result, (2, 2))
    assert close_to(pixel(result, (1, 1)), (127, 127, 127), 1)


def test_greyscale_png_replicates_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 77, 200]], dtype=np.uint8)).save(path)
    assert stored_mode(path) == "L"
    result = load_image(path)
    assert_rgb(result, (3, 1))
    assert [pixel(result, (x, 0)) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (200,) * 3]


def test_one_bit_png_maps_to_black_and_white(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    path = tmp_path / "bits.png"
    image.save(path)
    assert stored_mode(path) == "1"
    result = load_image(path)
    assert pixel(result, (0, 0)) == (0, 0, 0)
    assert pixel(result, (1, 0)) == WHITE


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert stored_mode(path) in ("I;16", "I")
    result = load_image(path)
    assert_rgb(result, (4, 1))
    assert pixel(result, (0, 0)) == (0, 0, 0)
    assert pixel(result, (1, 0)) == (1, 1, 1)  # 257 / 65535 * 255 == 1; clipping would give 255
    assert close_to(pixel(result, (2, 0)), (128, 128, 128), 1)
    assert pixel(result, (3, 0)) == WHITE


def test_sixteen_bit_big_endian_and_int_modes(tmp_path: Path) -> None:
    big = Image.new("I;16B", (2, 1))
    big.putpixel((1, 0), 65535)
    assert pixel(load_image(big), (1, 0)) == WHITE
    assert pixel(load_image(big), (0, 0)) == (0, 0, 0)
    wide = Image.fromarray(np.array([[32768, 65535]], dtype=np.int32))
    assert wide.mode == "I"
    result = load_image(wide)
    assert close_to(pixel(result, (0, 0)), (128, 128, 128), 1)
    assert pixel(result, (1, 0)) == WHITE
    negative = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))
    with pytest.raises(ImageLoadError, match=r"0\.\.65535"):
        load_image(negative)


def test_float_mode_uses_pillow_scale() -> None:
    image = Image.fromarray(np.array([[0.0, 100.4, 300.0]], dtype=np.float32))
    assert image.mode == "F"
    result = load_image(image)
    assert [pixel(result, (x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_cmyk_jpeg_converts_colours(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan ink
    assert stored_mode(path) == "CMYK"
    result = load_image(path)
    assert_rgb(result, (16, 16))
    assert close_to(pixel(result, (8, 8)), (0, 255, 255), 3)


def test_ycbcr_image_converts() -> None:
    image = Image.new("RGB", (4, 4), (200, 30, 60)).convert("YCbCr")
    assert close_to(pixel(load_image(image), (1, 1)), (200, 30, 60), 3)


def test_exif_orientation_six_rotates_clockwise(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # 32 wide, 16 high
    stored[:8, :8] = RED  # top-left block in storage order
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    result = load_image(path)
    assert_rgb(result, (16, 32))  # width and height swapped
    assert close_to(pixel(result, (result.width - 2, 1)), RED, 12)  # now top-right
    assert close_to(pixel(result, (1, 1)), (0, 0, 0), 12)
    with Image.open(path) as raw:
        unrotated = raw.convert("RGB")
    assert close_to(pixel(unrotated, (1, 1)), RED, 12)  # the orientation came from EXIF


# --- in-memory sources --------------------------------------------------------------------------


def test_bytes_bytearray_memoryview_and_file_object(tmp_path: Path) -> None:
    data = random_png(tmp_path / "src.png", size=8)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        result = load_image(source)
        assert_rgb(result, (8, 8))
        np.testing.assert_array_equal(np.asarray(result), expected)
    with (tmp_path / "src.png").open("rb") as handle:
        np.testing.assert_array_equal(np.asarray(load_image(handle)), expected)


def test_pil_image_source_is_not_modified() -> None:
    source = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    result = load_image(source)
    assert pixel(result, (0, 0)) == WHITE
    assert source.mode == "RGBA"
    assert result is not source
    rgb = Image.new("RGB", (2, 2), RED)
    assert load_image(rgb) is not rgb


def test_numpy_uint8_rgb_and_grey() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    grey = np.array([[0, 50], [100, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(grey)), np.repeat(grey[..., None], 3, 2))
    np.testing.assert_array_equal(
        np.asarray(load_image(grey[..., None])), np.repeat(grey[..., None], 3, 2)
    )


def test_numpy_uint16_float_bool_and_rgba() -> None:
    deep = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert [pixel(load_image(deep), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert pixel(load_image(deep.astype(">u2")), (1, 0))[0] == 128
    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert [pixel(load_image(floats), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    flags = np.array([[False, True]])
    assert [pixel(load_image(flags), (x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0]]], dtype=np.uint8)
    result = load_image(rgba)
    assert [pixel(result, (x, 0)) for x in range(2)] == [RED, WHITE]


def test_numpy_bad_inputs_are_explained() -> None:
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2), 1.5))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(ImageLoadError, match="transpose"):
        load_image(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="dtype int64"):
        load_image(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ImageLoadError, match="<array shape=\\(1, 2, 2, 3\\)"):
        load_image(np.zeros((1, 2, 2, 3), dtype=np.uint8))


def test_tensor_chw_uint8_and_float() -> None:
    chw = torch.arange(3 * 2 * 4, dtype=torch.uint8).reshape(3, 2, 4)
    result = load_image(chw)
    assert_rgb(result, (4, 2))
    np.testing.assert_array_equal(np.asarray(result), chw.permute(1, 2, 0).numpy())
    floats = torch.zeros(3, 2, 2)
    floats[0] = 1.0  # red channel full
    floats[2, 1, 1] = 0.5
    result = load_image(floats.requires_grad_())
    assert pixel(result, (0, 0)) == RED
    assert pixel(result, (1, 1)) == (255, 0, 128)
    grey = torch.tensor([[0.0, 1.0]], dtype=torch.float16)
    assert [pixel(load_image(grey), (x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]
    assert pixel(load_image(torch.ones(1, 2, 2)), (0, 0)) == WHITE


def test_tensor_in_hwc_layout_is_refused_with_hint() -> None:
    with pytest.raises(ImageLoadError, match=r"permute\(2, 0, 1\)"):
        load_image(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ImageLoadError, match="batch"):
        load_image(torch.zeros(1, 3, 8, 8))


def test_load_images_keeps_order(tmp_path: Path) -> None:
    images = load_images([np.zeros((2, 2), np.uint8), Image.new("RGB", (5, 1), BLUE)])
    assert [image.size for image in images] == [(2, 2), (5, 1)]
    assert pixel(images[1], (0, 0)) == BLUE


# --- broken inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_naming_path(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(1)
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_image(cut)
    assert str(cut) in str(info.value)
    with pytest.raises(ImageLoadError, match="<bytes: "):
        load_image(data[: len(data) // 2])
    with Image.open(cut) as lazy, pytest.raises(ImageLoadError, match="truncated") as lazy_info:
        load_image(lazy)  # opened but not yet decoded: load_image forces the decode
    assert str(cut) in str(lazy_info.value)
    assert load_image(full).size == (64, 64)  # the intact file loads


def test_text_file_raises_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("definitely not an image\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.jpg"
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ImageNotFoundError)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageLoadError, match="unsupported source type int"):
        load_image(42)  # type: ignore[arg-type]


# --- decompression-bomb guard -------------------------------------------------------------------


def png_claiming_size(real_png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width/height patched (and the chunk CRC fixed), data unchanged."""
    assert real_png[12:16] == b"IHDR"
    ihdr = bytearray(real_png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return real_png[:16] + bytes(ihdr) + crc + real_png[33:]


def test_too_many_pixels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twenty.png"
    random_png(path, size=20)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path, max_pixels=100)
    assert info.value.pixels == 400
    assert "400 pixels" in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ImageLoadError)
    assert load_image(path, max_pixels=400).size == (20, 20)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((20, 20), np.uint8), max_pixels=399)
    with pytest.raises(ImageTooLargeError):
        load_image(torch.zeros(3, 20, 20), max_pixels=399)


def test_size_is_checked_on_header_before_decoding(tmp_path: Path) -> None:
    small = random_png(tmp_path / "small.png", size=8)
    liar = tmp_path / "liar.png"
    liar.write_bytes(png_claiming_size(small, 5000, 4000))  # 20 Mpx claimed, 8x8 of data
    with Image.open(liar) as header_only:
        assert header_only.size == (5000, 4000)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(liar, max_pixels=1_000_000)
    assert info.value.pixels == 20_000_000
    # Without the guard the decoder runs and fails on the missing data: proof that the guard above
    # fired on the header alone, before any decoding.
    with pytest.raises(ImageLoadError) as decoded:
        load_image(liar, max_pixels=None)
    assert not isinstance(decoded.value, ImageTooLargeError)


def test_huge_header_converts_pillow_bomb_error(tmp_path: Path) -> None:
    small = random_png(tmp_path / "small.png", size=8)
    bomb = png_claiming_size(small, 100_000, 100_000)
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="10000000000 pixels") as info:
        load_image(bomb)
    assert info.value.pixels == 10_000_000_000
    assert "<bytes: " in str(info.value)
    with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
        load_image(bomb, max_pixels=None)  # Pillow's global guard still applies, reported as ours
    assert limit_before == Image.MAX_IMAGE_PIXELS  # no global state was changed
    assert DEFAULT_MAX_PIXELS < 100_000 * 100_000


def test_describe_source_names_each_kind(tmp_path: Path) -> None:
    assert describe_source(tmp_path / "a.png") == repr(str(tmp_path / "a.png"))
    assert describe_source(b"abc") == "<bytes: 3 bytes>"
    assert describe_source(np.zeros((2, 3), np.uint8)) == "<array shape=(2, 3) dtype=uint8>"
    assert describe_source(torch.zeros(3, 2, 2)) == "<tensor shape=(3, 2, 2) dtype=torch.float32>"
    assert describe_source(Image.new("L", (4, 5))) == "<PIL image mode=L size=4x5>"
    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    with path.open("rb") as handle:
        assert describe_source(handle) == f"<file {str(path)!r}>"


# --- URLs, against a local HTTP server on 127.0.0.1 ---------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the routes of `web`; each request ends by itself within a few seconds."""

    timeout = 10  # a stuck connection ends by itself
    routes: ClassVar[dict[str, Callable[[_Handler], None]]] = {}
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers.items()))
        route = type(self).routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)  # the client may give up on purpose (size or time limit)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_body(self, body: bytes, *, length: int | None) -> None:
        """200 with ``body``; ``length`` is the Content-Length sent (None: none, close-delimited)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Web:
    base: str
    png: bytes
    seen: list[dict[str, str]]

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    """A threaded HTTP server on 127.0.0.1 (never a real network), shut down after the test."""
    monkeypatch.setenv("no_proxy", "*")  # a proxy set on the machine must not see 127.0.0.1
    monkeypatch.setenv("NO_PROXY", "*")
    png = random_png(tmp_path / "served.png", size=16)
    bomb = png_claiming_size(png, 100_000, 100_000)
    big = png + b"\0" * 5000

    def slow_headers(h: _Handler) -> None:
        time.sleep(3.0)
        h.send_body(png, length=len(png))

    def drip(h: _Handler) -> None:  # each byte arrives quickly, the whole never in time
        h.send_response(200)
        h.send_header("Content-Length", str(len(png)))
        h.end_headers()
        for i in range(20):
            h.wfile.write(png[i : i + 1])
            h.wfile.flush()
            time.sleep(0.15)

    def declared_huge(h: _Handler) -> None:  # the body would come late: refusing must not wait
        h.send_response(200)
        h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.flush()
        time.sleep(3.0)
        h.wfile.write(png)

    def chunked(h: _Handler) -> None:
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        for start in range(0, len(big), 500):
            piece = big[start : start + 500]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    def redirect(target: str) -> Callable[[_Handler], None]:
        def route(h: _Handler) -> None:
            h.send_response(302)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()

        return route

    _Handler.routes = {
        "/good.png": lambda h: h.send_body(png, length=len(png)),
        "/no-length.png": lambda h: h.send_body(png, length=None),
        "/declared-big.png": lambda h: h.send_body(big, length=len(big)),
        "/declared-huge.png": declared_huge,
        "/undeclared-big.png": lambda h: h.send_body(big, length=None),
        "/chunked-big.png": chunked,
        "/short-length.png": lambda h: h.send_body(big, length=len(png) // 2),
        "/slow.png": slow_headers,
        "/drip.png": drip,
        "/bomb.png": lambda h: h.send_body(bomb, length=len(bomb)),
        "/text.png": lambda h: h.send_body(b"<html>not an image</html>", length=25),
        "/redirect-good": redirect("/good.png"),
        "/redirect-ftp": redirect("ftp://127.0.0.1:9/x.png"),
    }
    _Handler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Web(f"http://127.0.0.1:{server.server_address[1]}", png, _Handler.seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_loads_like_the_bytes_it_serves(web: Web) -> None:
    image = load_image(web.url("/good.png"))
    assert_rgb(image, (16, 16))
    assert np.array_equal(np.asarray(image), np.asarray(load_image(web.png)))
    assert web.seen[-1]["User-Agent"].startswith("vl-core/")
    assert load_image(web.url("/no-length.png")).size == (16, 16)
    assert load_image(web.url("/redirect-good")).size == (16, 16)
    upper = web.url("/good.png").replace("http://", "HTTP://")
    assert load_images([upper, web.png])[0].size == (16, 16)


def test_url_http_error_names_the_url(web: Web) -> None:
    url = web.url("/missing.png")
    with pytest.raises(ImageDownloadError) as info:
        load_image(url)
    assert info.value.status == 404
    assert str(info.value) == f"cannot load image {url!r}: HTTP 404 Not Found"
    assert isinstance(info.value, ImageLoadError)


def test_url_refused_connection_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/a.png"
    with pytest.raises(ImageDownloadError, match=re.escape(repr(url))) as info:
        load_image(url, timeout=5)
    assert info.value.status is None
    assert "cannot download" in info.value.reason


def test_url_declaring_too_many_bytes_is_refused_before_reading(web: Web) -> None:
    url = web.url("/declared-big.png")
    with pytest.raises(ImageDownloadTooLargeError) as info:
        load_image(url, max_bytes=1000)
    assert info.value.declared == len(web.png) + 5000
    assert info.value.limit == 1000
    assert repr(url) in str(info.value)
    assert "larger than max_bytes=1000" in str(info.value)
    assert load_image(url, max_bytes=len(web.png) + 5000).size == (16, 16)  # at the limit: fine
    started = time.monotonic()
    with pytest.raises(ImageDownloadTooLargeError) as huge:
        load_image(web.url("/declared-huge.png"), timeout=5)
    assert time.monotonic() - started < 2.0  # refused from the header: the body comes after 3 s
    assert huge.value.declared == 10**9
    assert huge.value.limit == DEFAULT_MAX_BYTES


@pytest.mark.parametrize("path", ["/undeclared-big.png", "/chunked-big.png"])
def test_url_without_declared_length_is_cut_off_while_streaming(web: Web, path: str) -> None:
    url = web.url(path)
    with pytest.raises(ImageDownloadTooLargeError) as info:
        load_image(url, max_bytes=1000)
    assert info.value.declared is None
    assert repr(url) in str(info.value)
    assert load_image(url).size == (16, 16)  # the default limit lets the same response through


def test_url_reads_no_more_than_its_declared_length(web: Web) -> None:
    # The server sends more than it declares: only the declared bytes are read (then the data is
    # a truncated PNG, reported as such) - a lying length cannot push past max_bytes either.
    url = web.url("/short-length.png")
    with pytest.raises(ImageLoadError, match=re.escape(repr(url))) as info:
        load_image(url, max_bytes=len(web.png))
    assert not isinstance(info.value, ImageDownloadError)


def test_url_slow_server_times_out_naming_the_url(web: Web) -> None:
    url = web.url("/slow.png")
    started = time.monotonic()
    with pytest.raises(ImageDownloadError, match="timed out") as info:
        load_image(url, timeout=0.3)
    assert time.monotonic() - started < 2.0  # did not wait for the server's 3 s
    assert repr(url) in str(info.value)


def test_url_total_time_is_limited_even_when_bytes_keep_coming(web: Web) -> None:
    url = web.url("/drip.png")  # a byte every 0.15 s: no single wait reaches the 0.4 s limit
    started = time.monotonic()
    with pytest.raises(ImageDownloadError, match="timed out") as info:
        load_image(url, timeout=0.4)
    assert time.monotonic() - started < 2.0  # the drip would take 3 s
    assert repr(url) in str(info.value)


def test_url_decompression_bomb_is_refused(web: Web) -> None:
    url = web.url("/bomb.png")
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="10000000000 pixels") as info:
        load_image(url)
    assert info.value.pixels == 10_000_000_000
    assert repr(url) in str(info.value)
    with pytest.raises(ImageTooLargeError):
        load_image(web.url("/good.png"), max_pixels=100)
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_url_that_is_not_an_image(web: Web) -> None:
    url = web.url("/text.png")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_image(url)
    assert repr(url) in str(info.value)


def test_url_redirect_to_other_scheme_is_refused(web: Web) -> None:
    with pytest.raises(ImageDownloadError, match="redirect to a non-HTTP URL") as info:
        load_image(web.url("/redirect-ftp"), timeout=5)
    assert info.value.status == 302


def test_url_credentials_stay_out_of_messages() -> None:
    assert describe_source("https://user:secret@example.invalid/a.png") == repr(
        "https://***@example.invalid/a.png"
    )
    assert describe_source("http://example.invalid/a.png") == repr("http://example.invalid/a.png")
    assert is_url("https://x/y")
    assert is_url("HTTP://x")
    assert not is_url(Path("http://x"))
    assert not is_url("httpx://x")
    assert not is_url(b"http://x")


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"timeout": 0}, "timeout must be a positive"),
        ({"timeout": float("nan")}, "timeout must be a positive"),
        ({"timeout": True}, "timeout must be a positive"),
        ({"max_bytes": 0}, "max_bytes must be a positive integer"),
        ({"max_bytes": 1.5}, "max_bytes must be a positive integer"),
    ],
)
def test_url_limits_are_validated(keywords: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_image("http://127.0.0.1:9/never-contacted.png", **keywords)
