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


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
HOSTILE = st.sampled_from([-1, 0, 2**40 + 1, 10**12, "../../etc/passwd", "/etc/passwd", [10**9] * 3, {}, [], "O"])
FIELDS = [  # paths into a valid metadata.json; the value there is replaced (a list index past the end appends)
    ("format_version",), ("frame_shape",), ("frame_shape", 0), ("frame_shape", 2), ("num_actions",), ("splits",),
    ("splits", "train"), ("splits", "train", "shards"), ("splits", "train", "shards", 0),
    ("splits", "train", "shards", 0, "file"), ("splits", "train", "shards", 0, "lengths"),
    ("splits", "train", "shards", 0, "lengths", 0), ("splits", "train", "episode_lengths"),
    ("splits", "train", "episode_lengths", 0), ("splits", "train", "frames"), ("splits", "train", "episodes"),
    ("arrays",), ("arrays", "frames"), ("generator",), ("generator", "effective_actions"),
    ("generator", "effective_actions", "of_action"), ("generator", "action_meanings"), ("chunk_len",),
]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    from conftest import write_synthetic

    root = tmp_path_factory.mktemp("fuzz") / "ds"
    write_synthetic(root, lengths=(12, 9), splits=("train",), chunk_len=5)
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON | HOSTILE)
def test_fuzzed_metadata_fields_only_ever_raise_data_error(fuzz_root, field, value):
    """Any value in any metadata field: the dataset reads and loads, or DataError names the problem."""
    from jasmine.data.dataset import DataError, action_meanings, effective_actions, read_metadata
    from jasmine.data.loader import make_loader

    good = (fuzz_root / "metadata.json").with_suffix(".good")
    if not good.exists():
        good.write_text((fuzz_root / "metadata.json").read_text())
    meta = json.loads(good.read_text())
    node = meta
    for key in field[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[min(key, len(node) - 1)]
    last = field[-1]
    if isinstance(node, list) and last >= len(node):
        node.append(value)
    else:
        node[last] = value
    (fuzz_root / "metadata.json").write_text(json.dumps(meta))
    try:
        m = read_metadata(fuzz_root)
        effective_actions(m)
        action_meanings(m)
        batch = next(iter(make_loader(fuzz_root, "train", seq_len=3, batch_size=2, seed=0, num_epochs=1)))
        assert batch["frames"].shape[:2] == (2, 3)
    except DataError:
        pass
    finally:
        (fuzz_root / "metadata.json").write_text(good.read_text())
