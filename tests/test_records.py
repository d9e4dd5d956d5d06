"""The record format: round trip, determinism, and untrusted bytes (every malformed record is a RecordFormatError)."""

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasmine.data.records import MAGIC, RecordFormatError, ShardWriter, decode_record, encode_record


def test_round_trip_preserves_arrays_and_meta():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    actions = rng.integers(0, 15, 5).astype(np.int32)
    meta = {"source": "x", "level_seed": 3, "episode_id": 1, "chunk_index": 0}
    arrays, got_meta = decode_record(encode_record({"frames": frames, "actions": actions}, meta))
    np.testing.assert_array_equal(arrays["frames"], frames)
    np.testing.assert_array_equal(arrays["actions"], actions)
    assert arrays["frames"].dtype == np.uint8 and arrays["actions"].dtype == np.int32
    assert got_meta == meta


def test_encoding_is_deterministic():
    a = {"frames": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)}
    assert encode_record(a, {"b": 1, "a": 2}) == encode_record(a, {"a": 2, "b": 1})


def forge(header, payload: bytes = b"", version: int = 2) -> bytes:
    """A record with a valid checksum around any header: only the header checks can refuse it."""
    body = (header if isinstance(header, bytes) else json.dumps(header).encode()) + payload
    return struct.pack("<4sHII", MAGIC, version, len(body) - len(payload), zlib.crc32(body)) + body


def spec(**kw):
    return {"meta": {}, "arrays": {"x": {"dtype": "uint8", "shape": [4], "offset": 0, "nbytes": 4, **kw}}}


@pytest.mark.parametrize(
    "buf, match",
    [
        (b"JS", "too short"),
        (b"PKL!" + b"\0" * 20, "bad magic"),
        (forge({"meta": {}, "arrays": {}}, version=9), "version 9"),
        (forge(b"{!!}"), "corrupt record header"),
        (forge(b"\xff\xfe"), "corrupt record header"),
        (forge(b"[" * 100_000 + b"]" * 100_000), "corrupt record header"),  # RecursionError in json
        (forge([1, 2]), "expected"),
        (forge({"meta": [], "arrays": {}}), "expected"),
        (forge(spec(offset=-64), b"\0" * 64), "offset -64"),
        (forge(spec(offset=3), b"\0" * 64), "offset 3"),
        (forge(spec(offset="0"), b"\0" * 64), "offset '0'"),
        (forge(spec(shape=[-4], nbytes=-4), b"\0" * 64), "shape"),
        (forge(spec(shape=[2.0, 2]), b"\0" * 64), "shape"),
        (forge(spec(shape=[1] * 9, nbytes=1), b"\0" * 64), "shape"),
        (forge(spec(nbytes=-4), b"\0" * 64), "nbytes -4"),
        (forge(spec(nbytes=True), b"\0" * 64), "nbytes True"),
        (forge(spec(shape=[10**12], nbytes=10**12), b"\0" * 64), "outside"),
        (forge(spec(dtype="object"), b"\0" * 64), "disallowed dtype"),
        (forge(spec(dtype=["uint8"]), b"\0" * 64), "disallowed dtype"),
        (forge({"meta": {}, "arrays": {"x": {"dtype": "uint8"}}}), "header entry"),
        (forge({"meta": {}, "arrays": {"x": 5}}), "header entry"),
    ],
)
def test_bad_bytes_raise_clear_errors(buf, match):
    with pytest.raises(RecordFormatError, match=match):
        decode_record(buf)


def test_checksum_catches_changed_payload_and_header():
    good = encode_record({"x": np.arange(8, dtype=np.uint8)}, {"k": 1})
    for i in (len(good) - 1, 20):  # a data byte, a header byte
        bad = bytearray(good)
        bad[i] ^= 1
        with pytest.raises(RecordFormatError, match="checksum"):
            decode_record(bytes(bad))
    with pytest.raises(RecordFormatError):
        decode_record(good[:-1])


def test_object_dtype_is_refused_both_ways():
    with pytest.raises(RecordFormatError, match="dtype"):
        encode_record({"x": np.array([object()])}, {})


arrays_st = st.dictionaries(
    st.sampled_from(["frames", "actions", "tokens", "x"]),
    st.tuples(st.sampled_from(["uint8", "int32", "float16"]), st.lists(st.integers(0, 3), max_size=3)),
    max_size=3,
)
mutation_st = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]), st.integers(0, 10**6), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays_st, mutation_st, st.booleans())
def test_fuzzed_records_decode_exactly_or_raise_record_format_error(specs, mutations, fix_checksum):
    """Mutated valid records either decode to exactly the original arrays or raise RecordFormatError.

    With ``fix_checksum`` the CRC is recomputed after mutating, so the header checks alone must hold.
    """
    rng = np.random.default_rng(0)
    arrays = {
        n: (rng.integers(0, 100, shape) if dt != "float16" else rng.normal(size=shape)).astype(dt)
        for n, (dt, shape) in specs.items()
    }
    buf = bytearray(encode_record(arrays, {"episode_id": 1}))
    for kind, pos, value in mutations:
        pos %= len(buf) + 1
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= 1 << (value % 8)
        elif kind == "set" and pos < len(buf):
            buf[pos] = value
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = bytes([value])
        elif kind == "delete" and pos < len(buf):
            del buf[pos]
    if fix_checksum and len(buf) >= 14:
        buf[10:14] = struct.pack("<I", zlib.crc32(bytes(buf[14:])))
    try:
        got, _ = decode_record(bytes(buf))
    except RecordFormatError:
        return
    if not fix_checksum:  # an intact checksum means the record is the original
        assert got.keys() == arrays.keys()
        for name in arrays:
            assert got[name].dtype == arrays[name].dtype and got[name].shape == arrays[name].shape
            np.testing.assert_array_equal(got[name], arrays[name])


def test_shard_writer_abort_leaves_only_complete_shards(tmp_path):
    rec = encode_record({"frames": np.zeros((2, 2, 2, 1), np.uint8)}, {})
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path, records_per_shard=2) as w:
            for _ in range(3):
                w.write(rec, 2)
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.array_record"]
