import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import FRAME_SHAPE, write_synthetic

from jasmine.data.dataset import DataError, read_metadata
from jasmine.data.loader import episode_clips, make_loader
from jasmine.data.records import RecordFormatError, ShardWriter, encode_record, write_json_atomic


@pytest.fixture(params=[2, 3], ids=["chunked", "grouped"])
def synthetic_dir(tmp_path, request):
    """Every loader test runs on both layouts: 20-frame records (format 2) and 8-frame ones (format 3,
    where windows of 8 frames mostly span two records)."""
    write_synthetic(tmp_path / "ds", chunk_len=20 if request.param == 2 else 8, format_version=request.param)
    return tmp_path / "ds"


def loader(root, seed=0, batch_size=4, seq_len=8, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return make_loader(root, "train", seq_len=seq_len, batch_size=batch_size, seed=seed, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=False):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batches_are_contiguous_windows_with_aligned_actions(synthetic_dir):
    for batch in take(iter(loader(synthetic_dir)), 10):
        assert batch["frames"].shape == (4, 8, *FRAME_SHAPE) and batch["frames"].dtype == np.uint8
        assert batch["actions"].shape == (4, 8) and batch["actions"].dtype == np.int32
        t = batch["frames"][:, :, 0, 0, 0].astype(int)  # channel 0 holds the frame index
        np.testing.assert_array_equal(np.diff(t, axis=1), 1)
        np.testing.assert_array_equal(batch["actions"], t % 7)


def test_same_seed_same_batches_and_different_seed_differs(synthetic_dir):
    a, b, c = (take(iter(loader(synthetic_dir, seed=s)), 6) for s in (1, 1, 2))
    assert_same(a, b)
    assert any(not np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c, strict=False))


@pytest.mark.parametrize("skip", [3, 11])  # mid-epoch, and past an epoch boundary (one epoch is ~5 batches)
def test_resume_from_iterator_state_continues_identically(synthetic_dir, skip):
    straight = take(iter(loader(synthetic_dir)), skip + 6)
    it = iter(loader(synthetic_dir))
    take(it, skip)
    state = it.get_state()
    resumed = iter(loader(synthetic_dir))
    resumed.set_state(state)
    assert_same(take(resumed, 6), straight[skip:])


def frames_of(batch) -> list[set]:
    """Per window, the set of (episode, frame) it holds (the synthetic pixels encode both)."""
    f = batch["frames"][:, :, 0, 0]
    return [{(int(e), int(t)) for t, e in zip(f[b, :, 0], f[b, :, 1], strict=False)} for b in range(len(f))]


def test_windows_of_an_epoch_never_overlap(synthetic_dir):
    seen: set = set()
    for batch in take(iter(loader(synthetic_dir, batch_size=2, seq_len=8)), 8):  # 16 slots: 8 batches in epoch 0
        for window in frames_of(batch):
            assert not window & seen, "two windows of one epoch share frames"
            seen |= window


def test_processes_get_disjoint_blocks_that_make_up_the_one_process_batch(synthetic_dir):
    one = take(iter(loader(synthetic_dir, batch_size=4)), 4)
    parts = [take(iter(loader(synthetic_dir, batch_size=4, process_index=i, process_count=2)), 4) for i in range(2)]
    for b, batch in enumerate(one):
        p0, p1 = parts[0][b], parts[1][b]
        assert p0["frames"].shape[0] == p1["frames"].shape[0] == 2
        w0, w1 = frames_of(p0), frames_of(p1)
        assert not set().union(*w0) & set().union(*w1), "the two processes' windows share frames"
        for k in batch:  # together, in block order, they are exactly the 1-process batch
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), batch[k])
    with pytest.raises(ValueError, match="--batch-size 5 is not divisible by the 2 JAX processes"):
        loader(synthetic_dir, batch_size=5, process_index=0, process_count=2)


def test_aligned_windows_start_at_episode_frames_divisible_by_align(synthetic_dir):
    for batch in take(iter(loader(synthetic_dir, seq_len=6, align=4)), 12):
        t0 = batch["frames"][:, 0, 0, 0, 0].astype(int)  # episode frame index of each window's first frame
        assert (t0 % 4 == 0).all(), t0
    starts = {
        int(t)
        for seed in range(6)
        for batch in take(iter(loader(synthetic_dir, seed=seed, seq_len=6, align=4)), 4)
        for t in batch["frames"][:, 0, 0, 0, 0]
    }
    assert len(starts) > 4  # random offsets: many aligned starts, not a fixed grid per record


def test_eval_clips_come_from_distinct_episodes(synthetic_dir):
    clips = episode_clips(synthetic_dir, "train", 4, 8, seed=0, align=2)
    episodes = clips["frames"][:, 0, 0, 0, 1]
    assert len(set(episodes.tolist())) == 4 and episodes.tolist() == clips["episode"].tolist()
    np.testing.assert_array_equal(clips["frames"][:, :, 0, 0, 0], clips["start"][:, None] + np.arange(8))
    assert (clips["start"] % 2 == 0).all()
    again = episode_clips(synthetic_dir, "train", 4, 8, seed=0, align=2)
    np.testing.assert_array_equal(again["frames"], clips["frames"])
    with pytest.raises(DataError, match="only 5 episodes hold a clip of 8 frames, fewer than the 6 clips"):
        episode_clips(synthetic_dir, "train", 6, 8, seed=0)


def test_short_episodes_skipped_once_with_one_warning(synthetic_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it = iter(loader(synthetic_dir, seq_len=16))
        take(it, 8)
    msgs = [str(w.message) for w in caught if "shorter than seq_len" in str(w.message)]
    assert len(msgs) == 1 and "skipping" in msgs[0]


def test_no_episode_long_enough_is_a_clear_error(synthetic_dir):
    with pytest.raises(DataError, match=r"no record has a window of seq_len=64 frames"):
        loader(synthetic_dir, seq_len=64)


def test_action_free_data_has_no_actions(tmp_path):
    write_synthetic(tmp_path / "ds", actions=False)
    batch = next(iter(loader(tmp_path / "ds")))
    assert set(batch) == {"frames"}


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        loader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        loader(tmp_path / "empty")


def test_image_shape_mismatch_names_metadata(synthetic_dir):
    with pytest.raises(DataError, match=r"metadata.json: frames are \[8, 8, 3\].*asks for \[64, 64, 3\]"):
        loader(synthetic_dir, image_shape=(64, 64, 3))


def test_corrupt_shard_is_named(synthetic_dir):
    shard = synthetic_dir / "train" / "shard-00000.array_record"
    shard.write_bytes(b"this is not an array record file" * 100)
    with pytest.raises(DataError, match="shard-00000.array_record"):
        take(iter(loader(synthetic_dir)), 20)


def test_record_of_wrong_shape_or_dtype_is_named(synthetic_dir):
    meta = read_metadata(synthetic_dir)
    shard = meta["splits"]["train"]["shards"][0]
    with ShardWriter(synthetic_dir / "train") as w:  # rewrite shard 0 with wrong frame sizes
        w.shards = []
        for n in shard["lengths"]:
            w.write(
                encode_record({"frames": np.zeros((n, 4, 4, 3), np.uint8), "actions": np.zeros(n, np.int32)}, {}), n
            )
    with pytest.raises(
        RecordFormatError,
        match=r"shard-00000.array_record, record \d+: frames are uint8\[\d+, 4, 4, 3\], expected uint8\[\d+, 8, 8, 3\]",
    ):
        take(iter(loader(synthetic_dir)), 20)


def test_killed_generation_leaves_no_readable_half_shard(tmp_path):
    """SIGKILL a writer mid-shard: no dataset at --out, only complete shards in the staged copy, which the loader
    refuses."""
    root = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import synthetic_episode
        from jasmine.data.dataset import DatasetWriter
        w = DatasetWriter({str(root)!r}, frame_shape=(8, 8, 3), num_actions=7, source="s", generator={{}},
                          chunk_len=10, records_per_shard=4)
        for e in range(1000):
            w.add_episode("train", *synthetic_episode(e, 30), {{"episode_id": e}})
            if e == 5:
                print("ready", flush=True)
            time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from array_record.python.array_record_module import ArrayRecordReader

    assert not root.exists()  # the dataset is written beside it and swapped in only when complete
    (staged,) = tmp_path.glob(".ds.jasmine-tmp-*")
    shards = sorted((staged / "train").glob("*.array_record"))
    assert shards and list((staged / "train").glob("*.tmp"))  # finished shards plus the one cut short
    for shard in shards:
        assert ArrayRecordReader(str(shard)).num_records() == 4
    with pytest.raises(DataError, match="does not exist"):
        loader(root)
    with pytest.raises(DataError, match="no metadata.json.*interrupted generation"):
        loader(staged)


def test_corrupt_record_inside_a_valid_shard_is_named(synthetic_dir):
    from array_record.python.array_record_module import ArrayRecordWriter

    meta = read_metadata(synthetic_dir)
    shard = meta["splits"]["train"]["shards"][0]
    w = ArrayRecordWriter(str(synthetic_dir / shard["file"]), "group_size:1")
    for _ in shard["lengths"]:
        w.write(b"pickle bytes, not a jasmine record")
    w.close()
    with pytest.raises(RecordFormatError, match=r"shard-00000.array_record, record \d+: bad magic"):
        take(iter(loader(synthetic_dir)), 20)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.array_record", "train/../../outside.array_record"])
def test_shard_paths_must_stay_inside_the_dataset(synthetic_dir, path):
    meta = read_metadata(synthetic_dir)
    meta["splits"]["train"]["shards"][0]["file"] = path
    write_json_atomic(synthetic_dir / "metadata.json", meta)
    with pytest.raises(DataError, match="shard path .* (must be a relative path|leaves the dataset)"):
        loader(synthetic_dir)
