"""`jasmine data import-jasmine`: the reference's pickled records convert exactly, and a record that would
run code is refused before anything runs."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from jasmine.data.dataset import DataError, RecordFormatError, iter_records, read_metadata
from jasmine.data.import_jasmine import ImportArgs, import_jasmine
from jasmine.data.loader import make_loader


def write_reference(root: Path, split_records: dict[str, list[dict]], protocol=pickle.HIGHEST_PROTOCOL) -> None:
    """Shards the way the reference writes them: pickle.dumps of a dict per record, group_size:1."""
    from array_record.python.array_record_module import ArrayRecordWriter

    for split, records in split_records.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        w = ArrayRecordWriter(str(root / split / "data_0000.array_record"), "group_size:1")
        for rec in records:
            w.write(rec if isinstance(rec, bytes) else pickle.dumps(rec, protocol=protocol))
        w.close()


def episode(rng, t, actions=True, shape=(64, 64, 3)):
    video = rng.integers(0, 256, (t, *shape), dtype=np.uint8)
    rec = {"raw_video": video.tobytes(), "sequence_length": t}
    if actions:
        rec["actions"] = rng.integers(0, 15, (t,)).astype(np.int64)
    return rec, video


@pytest.mark.parametrize("protocol", [2, 5])
def test_reference_records_convert_exactly(tmp_path, protocol):
    rng = np.random.default_rng(0)
    made = {
        s: [episode(rng, t) for t in lens] for s, lens in (("train", (40, 17, 25)), ("val", (20,)), ("test", (18,)))
    }
    write_reference(tmp_path / "ref", {s: [r for r, _ in eps] for s, eps in made.items()}, protocol)
    meta = import_jasmine(ImportArgs(inputs=tmp_path / "ref", out=tmp_path / "ds", chunk_len=16))
    assert meta["num_actions"] == max(int(r["actions"].max()) for eps in made.values() for r, _ in eps) + 1
    for split, eps in made.items():
        arrays = list(iter_records(tmp_path / "ds", read_metadata(tmp_path / "ds"), split))
        frames = np.concatenate([a["frames"] for a, _ in arrays])
        actions = np.concatenate([a["actions"] for a, _ in arrays])
        np.testing.assert_array_equal(frames, np.concatenate([v for _, v in eps]))
        np.testing.assert_array_equal(actions, np.concatenate([r["actions"] for r, _ in eps]))
        assert meta["splits"][split]["episode_lengths"] == [len(v) for _, v in eps]
    batch = next(iter(make_loader(tmp_path / "ds", "train", seq_len=8, batch_size=2, seed=0)))
    assert batch["frames"].shape == (2, 8, 64, 64, 3)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_record_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    rng = np.random.default_rng(1)
    marker = tmp_path / "pwned"
    good, _ = episode(rng, 10)
    evil = pickle.dumps({"raw_video": _Exploit(marker), "sequence_length": 10})
    write_reference(tmp_path / "ref", {"train": [good, evil]})
    with pytest.raises(
        RecordFormatError,
        match=r"shard .*train/data_0000.array_record, record 1: refused "
        r"(posix|os|nt)\.system: only plain data",
    ):
        import_jasmine(ImportArgs(inputs=tmp_path / "ref", out=tmp_path / "ds"))
    assert not marker.exists() and not (tmp_path / "ds" / "metadata.json").exists()
    pickle.loads(evil)  # the same bytes do run code under plain pickle: the test is real
    assert marker.exists()


@pytest.mark.parametrize(
    "record, match",
    [
        (b"\x80\x04garbage", r"record 0: not a readable pickle"),
        (pickle.dumps([1, 2]), r"record 0: expected a dict with raw_video and sequence_length, got list"),
        (
            pickle.dumps({"raw_video": b"\x00" * 10, "sequence_length": 2}),
            r"raw_video holds 10 bytes, not "
            r"sequence_length 2 x 64x64x3",
        ),
        (
            pickle.dumps({"raw_video": b"\x00" * 64 * 64 * 3, "sequence_length": 1, "actions": np.array([0.5])}),
            r"actions are float64\[1\], expected int\[1, ...\]",
        ),
    ],
)
def test_malformed_reference_records_are_named(tmp_path, record, match):
    write_reference(tmp_path / "ref", {"train": [record]})
    with pytest.raises(RecordFormatError, match=match):
        import_jasmine(ImportArgs(inputs=tmp_path / "ref", out=tmp_path / "ds"))


def test_flat_folder_is_split_by_shard_and_vector_actions_are_dropped(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    rng = np.random.default_rng(2)
    (tmp_path / "flat").mkdir()
    for k in range(5):
        w = ArrayRecordWriter(str(tmp_path / "flat" / f"data_{k:04d}.array_record"), "group_size:1")
        rec, _ = episode(rng, 12, actions=False, shape=(8, 8, 3))
        rec["actions"] = rng.integers(0, 2, (12, 11))  # MineRL-style vector actions
        w.write(pickle.dumps(rec))
        w.close()
    meta = import_jasmine(
        ImportArgs(
            inputs=tmp_path / "flat", out=tmp_path / "ds", frame_shape=(8, 8, 3), val_fraction=0.2, test_fraction=0.2
        )
    )
    assert meta["num_actions"] == 0 and meta["generator"]["actions"] == "vector actions dropped"
    sources = [set(meta["splits"][s]["sources"]) for s in meta["splits"]]
    assert sorted(len(s) for s in sources) == [1, 1, 3] and len(set().union(*sources)) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*.array_record shards in --in .*empty"):
        import_jasmine(ImportArgs(inputs=tmp_path / "empty", out=tmp_path / "x"))


def test_records_are_read_in_a_child_whose_memory_is_capped(tmp_path):
    """A record that needs more memory than --max-memory-mb is refused by name, the importing process is unharmed
    and writes nothing; the same record imports with room to spare."""
    rng = np.random.default_rng(0)
    big, _ = episode(rng, 200)  # 2.4 MB of frames
    write_reference(tmp_path / "ref", {"train": [episode(rng, 20)[0], big]})
    with pytest.raises(RecordFormatError, match=r"data_0000.array_record, record 1: .*--max-memory-mb 1"):
        import_jasmine(ImportArgs(inputs=tmp_path / "ref", out=tmp_path / "ds", max_memory_mb=1))
    assert not (tmp_path / "ds").exists()
    meta = import_jasmine(ImportArgs(inputs=tmp_path / "ref", out=tmp_path / "ds", max_memory_mb=64))
    assert meta["splits"]["train"]["episode_lengths"] == [20, 200]
