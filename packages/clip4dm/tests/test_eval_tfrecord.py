"""TFRecord framing, CRC32C and tf.train.Example parsing, against bytes assembled by hand from the
format's definition (no TensorFlow, no protobuf)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from clip4dm.eval.tfrecord import (
    Feature,
    TFExampleError,
    crc32c,
    encode_example,
    frame_record,
    masked_crc32c,
    parse_example,
    read_records,
    write_tfrecord,
)


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit: reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def literal_mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0


@pytest.mark.parametrize("size", [1, 7, 4095, 4096, 4097, 10_000, 70_001])
def test_crc32c_equals_bitwise_definition(size: int) -> None:
    data = os.urandom(size)
    assert crc32c(data) == bitwise_crc32c(data)
    half = size // 2
    assert crc32c(data[half:], crc32c(data[:half])) == crc32c(data)  # continuation
    assert masked_crc32c(data) == literal_mask(bitwise_crc32c(data))


def test_frame_is_length_crc_data_crc() -> None:
    data = b"hello tfrecord"
    length = struct.pack("<Q", len(data))
    expected = (
        length
        + struct.pack("<I", literal_mask(bitwise_crc32c(length)))
        + data
        + struct.pack("<I", literal_mask(bitwise_crc32c(data)))
    )
    assert frame_record(data) == expected


# Example{features{feature{key:"k" value{bytes_list{value:"ab"}}}}}, assembled field by field.
HAND_BYTES_EXAMPLE = bytes.fromhex("0a0d0a0b0a016b12060a040a026162")
# float_list {value: 2.5} packed: FloatList = 0a 04 <2.5 as fixed32>; Feature = 12 06 ...
PACKED_FLOAT = bytes.fromhex("0a0400002040")
# int64_list {value: -1 packed}: ten-byte varint of 2^64-1
PACKED_MINUS_ONE = bytes.fromhex("0a0affffffffffffffffff01")


def _wrap(key: bytes, feature: bytes) -> bytes:
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    return b"\x0a" + bytes([len(features)]) + features


def test_parse_hand_assembled_examples() -> None:
    assert parse_example(HAND_BYTES_EXAMPLE) == {"k": Feature(bytes_list=(b"ab",))}
    packed = _wrap(b"s", b"\x12" + bytes([len(PACKED_FLOAT)]) + PACKED_FLOAT)
    assert parse_example(packed) == {"s": Feature(float_list=(2.5,))}
    unpacked = _wrap(
        b"s", b"\x12\x0a" + b"\x0d" + struct.pack("<f", 1.5) + b"\x0d" + struct.pack("<f", -2.0)
    )
    assert parse_example(unpacked) == {"s": Feature(float_list=(1.5, -2.0))}
    ints = _wrap(b"n", b"\x1a" + bytes([len(PACKED_MINUS_ONE)]) + PACKED_MINUS_ONE)
    assert parse_example(ints) == {"n": Feature(int64_list=(-1,))}
    unpacked_ints = _wrap(b"n", b"\x1a\x05" + b"\x08\xac\x02" + b"\x08\x07")  # 300, 7
    assert parse_example(unpacked_ints) == {"n": Feature(int64_list=(300, 7))}
    # unknown fields (here a field 5 varint) are skipped
    assert parse_example(b"\x28\x01" + HAND_BYTES_EXAMPLE) == {"k": Feature(bytes_list=(b"ab",))}


def test_encode_example_matches_the_wire_format() -> None:
    assert encode_example({"k": Feature(bytes_list=(b"ab",))}) == HAND_BYTES_EXAMPLE
    packed = _wrap(b"s", b"\x12" + bytes([len(PACKED_FLOAT)]) + PACKED_FLOAT)
    assert encode_example({"s": Feature(float_list=(2.5,))}) == packed
    features = {
        "filename": Feature(bytes_list=(b"x/y.png", b"")),
        "score": Feature(float_list=(0.25, 3.0)),
        "ints": Feature(int64_list=(0, 1, -5, 2**40)),
        "empty": Feature(),
    }
    assert parse_example(encode_example(features)) == features


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x05\x0a", "past the end"),
        (b"\x0a", "truncated varint"),
        (b"\x0b", "wire type 3"),
        (_wrap(b"s", b"\x12\x03\x0a\x01\x00"), "fixed32"),
    ],
)
def test_malformed_examples_raise(data: bytes, message: str) -> None:
    with pytest.raises(TFExampleError, match=message):
        parse_example(data)


def _records(tmp_path: Path) -> tuple[Path, list[bytes]]:
    payloads = [b"first", os.urandom(5000), b"third record"]
    path = tmp_path / "data.tfrecord"
    write_tfrecord(path, payloads)
    return path, payloads


def test_read_records_round_trip(tmp_path: Path) -> None:
    path, payloads = _records(tmp_path)
    records = list(read_records(path))
    assert [r.data for r in records] == payloads
    assert [r.offset for r in records] == [0, 21, 21 + 5016]
    assert all(r.error is None for r in records)


def test_corrupt_data_is_one_error_and_reading_goes_on(tmp_path: Path) -> None:
    path, payloads = _records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[21 + 12 + 100] ^= 0xFF  # a byte inside the second record's data
    path.write_bytes(bytes(raw))
    records = list(read_records(path))
    assert [r.data for r in records] == [payloads[0], None, payloads[2]]
    assert records[1].error == "corrupt record data at byte 21 (CRC mismatch)"
    unchecked = list(read_records(path, verify_crc=False))
    assert unchecked[1].data is not None
    assert unchecked[1].data != payloads[1]


def test_truncated_file_and_corrupt_length_end_the_file(tmp_path: Path) -> None:
    path, payloads = _records(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    records = list(read_records(path))
    assert [r.data for r in records[:2]] == payloads[:2]
    assert records[2].error is not None
    assert records[2].error.startswith("truncated record at byte 5037")
    bad_length = bytearray(raw)
    bad_length[0] ^= 0x01
    path.write_bytes(bytes(bad_length))
    records = list(read_records(path))
    assert len(records) == 1
    assert records[0].error == "corrupt record length at byte 0 (CRC mismatch)"
    path.write_bytes(raw[:5])
    assert next(iter(read_records(path))).error == "truncated record header at byte 0"
