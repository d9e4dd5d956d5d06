import numpy as np
import pytest

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


@pytest.mark.parametrize(
    "buf, match",
    [
        (b"JS", "too short"),
        (b"PKL!" + b"\0" * 20, "bad magic"),
        (MAGIC + b"\x09\x00" + b"\x04\x00\x00\x00" + b"{}  ", "version 9"),
        (MAGIC + b"\x01\x00" + b"\x04\x00\x00\x00" + b"{!!}", "corrupt record header"),
    ],
)
def test_bad_bytes_raise_clear_errors(buf, match):
    with pytest.raises(RecordFormatError, match=match):
        decode_record(buf)


def test_object_dtype_is_refused_both_ways():
    with pytest.raises(RecordFormatError, match="dtype"):
        encode_record({"x": np.array([object()])}, {})
    buf = encode_record({"x": np.zeros(2, np.uint8)}, {}).replace(b'"uint8"', b'"object"')
    with pytest.raises(RecordFormatError, match="disallowed dtype"):
        decode_record(buf)


def test_shard_writer_abort_leaves_only_complete_shards(tmp_path):
    rec = encode_record({"frames": np.zeros((2, 2, 2, 1), np.uint8)}, {})
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path, records_per_shard=2) as w:
            for _ in range(3):
                w.write(rec, 2)
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.array_record"]
