"""TFRecord files of ``tf.train.Example`` records, read and written without TensorFlow or protobuf.

A record is framed as: uint64 length, uint32 masked CRC32C of those 8 bytes, the data, uint32
masked CRC32C of the data (little-endian; ``masked = rotr15(crc) + 0xa282ead8``). The data is a
``tf.train.Example``: ``Features features = 1`` holding ``map<string, Feature> feature = 1``;
a ``Feature`` is one of ``BytesList bytes_list = 1``, ``FloatList float_list = 2`` or
``Int64List int64_list = 3``, each a ``repeated ... value = 1`` (packed or not).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "Feature",
    "RawRecord",
    "TFExampleError",
    "crc32c",
    "encode_example",
    "frame_record",
    "masked_crc32c",
    "parse_example",
    "read_records",
    "write_tfrecord",
]

# -- CRC32C (Castagnoli), reflected --------------------------------------------------------------

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> npt.NDArray[np.uint32]:
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(_POLY), crc >> 1).astype(np.uint32)
    return crc


_TABLE = _make_table()
_TABLE_LIST: list[int] = [int(x) for x in _TABLE]
_VECTOR_MIN = 4096


def _update_bytes(state: int, data: bytes | memoryview) -> int:
    table = _TABLE_LIST
    for byte in data:
        state = table[(state ^ byte) & 0xFF] ^ (state >> 8)
    return state


@functools.lru_cache(maxsize=16)
def _shift_tables(width: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Byte tables of the linear map "advance the CRC register over ``width`` zero bytes"."""
    basis = np.array([1 << bit for bit in range(32)], dtype=np.uint32)
    for _ in range(width):
        basis = _TABLE[basis & 0xFF] ^ (basis >> 8)
    values = np.arange(256, dtype=np.uint32)
    tables: list[list[int]] = []
    for k in range(4):
        table = np.zeros(256, dtype=np.uint32)
        for j in range(8):
            table ^= np.where((values >> j) & 1, basis[8 * k + j], np.uint32(0)).astype(np.uint32)
        tables.append([int(x) for x in table])
    return tables[0], tables[1], tables[2], tables[3]


def _raw_update(state: int, data: bytes | memoryview) -> int:
    """The CRC register after ``data`` (no pre/post inversion).

    Long inputs are cut into equal chunks whose registers are computed side by side with numpy,
    then chained: the register is linear, so ``U(s, chunk) = shift(s) ^ U(0, chunk)``.
    """
    size = len(data)
    if size < _VECTOR_MIN:
        return _update_bytes(state, data)
    width = 1 << min(12, max(6, round(math.log2(math.sqrt(size / 4)))))
    count = size // width
    block = np.frombuffer(data, dtype=np.uint8, count=count * width).reshape(count, width)
    chunk = np.zeros(count, dtype=np.uint32)
    for column in np.ascontiguousarray(block.T):
        chunk = _TABLE[(chunk ^ column) & 0xFF] ^ (chunk >> 8)
    t0, t1, t2, t3 = _shift_tables(width)
    for value in chunk.tolist():
        state = (
            t0[state & 0xFF] ^ t1[(state >> 8) & 0xFF] ^ t2[(state >> 16) & 0xFF] ^ t3[state >> 24]
        ) ^ value
    return _update_bytes(state, memoryview(data)[count * width :])


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value``."""
    return _raw_update(value ^ _U32, data) ^ _U32


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits, add ``0xa282ead8`` (mod 2^32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


# -- record framing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    """One record of a TFRecord file: its position, and its data or why it is unusable."""

    index: int
    offset: int
    data: bytes | None
    error: str | None = None


def read_records(path: str | Path, *, verify_crc: bool = True) -> Iterator[RawRecord]:
    """The records of a TFRecord file, in order.

    A record whose data fails its checksum is yielded with an ``error`` and reading goes on; a
    truncated file or a corrupt length ends the file with one error record (what follows cannot
    be framed). ``verify_crc=False`` skips both checksums (faster; corruption goes unnoticed).
    Yields `RawRecord`s; raises ``OSError`` (``FileNotFoundError``) when the file cannot be read.
    """
    with open(path, "rb") as handle:
        index = 0
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                yield RawRecord(index, offset, None, f"truncated record header at byte {offset}")
                return
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify_crc and masked_crc32c(header[:8]) != length_crc:
                yield RawRecord(
                    index, offset, None, f"corrupt record length at byte {offset} (CRC mismatch)"
                )
                return
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                yield RawRecord(
                    index,
                    offset,
                    None,
                    f"truncated record at byte {offset} ({length} data bytes announced)",
                )
                return
            error = None
            if verify_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                error = f"corrupt record data at byte {offset} (CRC mismatch)"
            yield RawRecord(index, offset, None if error else data, error)
            index += 1
            offset += 16 + length


def frame_record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord record."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def write_tfrecord(path: str | Path, records: Iterable[bytes]) -> None:
    """Write ``records`` (e.g. from `encode_example`) as a TFRecord file; raises ``OSError``."""
    with open(path, "wb") as handle:
        for data in records:
            handle.write(frame_record(data))


# -- tf.train.Example ----------------------------------------------------------------------------


class TFExampleError(ValueError):
    """The bytes are not a well-formed ``tf.train.Example``."""


@dataclass(frozen=True)
class Feature:
    """One ``tf.train.Feature``: exactly one of the lists is meant to be set."""

    bytes_list: tuple[bytes, ...] = ()
    float_list: tuple[float, ...] = ()
    int64_list: tuple[int, ...] = ()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise TFExampleError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise TFExampleError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)``: varints as ``int``, everything else as ``bytes``."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise TFExampleError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise TFExampleError(f"field {number} runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise TFExampleError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _payload(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TFExampleError(f"{what} must be length-delimited")
    return value


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes_list(buf: bytes) -> tuple[bytes, ...]:
    return tuple(_payload(v, "BytesList.value") for n, _, v in _fields(buf) if n == 1)


def _float_list(buf: bytes) -> tuple[float, ...]:
    values: list[float] = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if wire not in (2, 5) or not isinstance(value, bytes) or len(value) % 4:
            raise TFExampleError("FloatList.value must be fixed32 floats")
        values.extend(struct.unpack(f"<{len(value) // 4}f", value))
    return tuple(values)


def _int64_list(buf: bytes) -> tuple[int, ...]:
    values: list[int] = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if isinstance(value, int):
            values.append(_signed64(value))
        elif wire == 2:
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                values.append(_signed64(item))
        else:
            raise TFExampleError("Int64List.value must be varints")
    return tuple(values)


def _feature(buf: bytes) -> Feature:
    feature = Feature()
    for number, _, value in _fields(buf):
        if number == 1:
            feature = Feature(bytes_list=_bytes_list(_payload(value, "bytes_list")))
        elif number == 2:
            feature = Feature(float_list=_float_list(_payload(value, "float_list")))
        elif number == 3:
            feature = Feature(int64_list=_int64_list(_payload(value, "int64_list")))
    return feature


def parse_example(data: bytes) -> dict[str, Feature]:
    """The features of a serialized ``tf.train.Example`` by name (unknown fields are skipped).

    Raises `TFExampleError` when the bytes are not a well-formed ``tf.train.Example``.
    """
    features: dict[str, Feature] = {}
    for number, _, value in _fields(data):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(_payload(value, "Example.features")):
            if entry_number != 1:
                continue
            key = ""
            feature = Feature()
            for part, _, item in _fields(_payload(entry, "Features.feature")):
                if part == 1:
                    try:
                        key = _payload(item, "feature key").decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise TFExampleError("feature key is not UTF-8") from exc
                elif part == 2:
                    feature = _feature(_payload(item, "feature value"))
            features[key] = feature
    return features


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_feature(feature: Feature) -> bytes:
    if feature.bytes_list:
        return _delimited(1, b"".join(_delimited(1, v) for v in feature.bytes_list))
    if feature.float_list:
        packed = struct.pack(f"<{len(feature.float_list)}f", *feature.float_list)
        return _delimited(2, _delimited(1, packed))
    if feature.int64_list:
        packed = b"".join(_encode_varint(v) for v in feature.int64_list)
        return _delimited(3, _delimited(1, packed))
    return b""


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialize features as a ``tf.train.Example`` (lists packed, as TensorFlow writes them)."""
    entries = b"".join(
        _delimited(1, _delimited(1, key.encode("utf-8")) + _delimited(2, _encode_feature(f)))
        for key, f in features.items()
    )
    return _delimited(1, entries)
