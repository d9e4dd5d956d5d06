"""Record layouts: format 3 (grouped) against format 2 (chunked), relayout, and windows read from few records."""

import numpy as np
import pytest
from conftest import write_synthetic

from jasmine.data.dataset import DataError, iter_records, read_metadata, relayout
from jasmine.data.loader import CropWindow, EpisodeIndex, WindowSlots


def episodes(root, split):
    """Each episode's arrays, concatenated from its records."""
    meta = read_metadata(root)
    out, parts = [], []
    lengths = list(meta["splits"][split]["episode_lengths"])
    for arrays, _ in iter_records(root, meta, split):
        parts.append(arrays)
        if sum(len(p["frames"]) for p in parts) == lengths[len(out)]:
            out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
            parts = []
    return out


def test_relayout_round_trip_keeps_every_episode(tmp_path):
    write_synthetic(tmp_path / "v2", chunk_len=20)
    v3 = relayout(tmp_path / "v2", tmp_path / "v3", 3)
    back = relayout(tmp_path / "v3", tmp_path / "back", 2, chunk_len=20)
    src = read_metadata(tmp_path / "v2")
    assert v3["format_version"] == 3 and v3["chunk_len"] == 8 and back["format_version"] == 2
    for split in ("train", "val"):
        a, b = episodes(tmp_path / "v2", split), episodes(tmp_path / "v3", split)
        assert len(a) == len(b) == 5
        for x, y in zip(a, b, strict=False):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        assert v3["splits"][split]["episode_lengths"] == src["splits"][split]["episode_lengths"]
        assert v3["splits"][split]["records"] == sum(-(-n // 8) for n in src["splits"][split]["episode_lengths"])

        def records(m, split=split):
            return [n for shard in m["splits"][split]["shards"] for n in shard["lengths"]]

        assert records(back) == records(src)  # the same records again
    from array_record.python.array_record_module import ArrayRecordReader

    def options(root):
        return {ArrayRecordReader(str(p)).writer_options_string() for p in root.rglob("*.array_record")}

    assert all(",uncompressed," in o for o in options(tmp_path / "v3"))  # a window's records are read, not inflated
    assert not any("uncompressed" in o for o in options(tmp_path / "v2"))


def test_relayout_errors_are_named(tmp_path):
    write_synthetic(tmp_path / "v2")
    with pytest.raises(DataError, match="is the input"):
        relayout(tmp_path / "v2", tmp_path / "v2", 3)
    with pytest.raises(DataError, match=r"no split 'test' \(have \['train', 'val'\]\)"):
        relayout(tmp_path / "v2", tmp_path / "x", 3, splits=("test",))
    with pytest.raises(DataError, match=r"--format-version 7: this jasmine writes \[2, 3\]"):
        relayout(tmp_path / "v2", tmp_path / "y", 7)
    relayout(tmp_path / "v2", tmp_path / "z", 3)
    with pytest.raises(DataError, match="already holds a dataset"):
        relayout(tmp_path / "v2", tmp_path / "z", 3)


def test_a_grouped_window_decodes_only_the_records_it_overlaps(tmp_path, monkeypatch):
    write_synthetic(tmp_path / "v3", chunk_len=8, format_version=3)
    read = []
    original = EpisodeIndex._read_record
    monkeypatch.setattr(EpisodeIndex, "_read_record", lambda self, r: read.append(r) or original(self, r))
    index = EpisodeIndex(tmp_path / "v3", "train")
    assert list(index.lengths) == [40, 33, 25, 60, 9]  # one segment per episode, from 8-frame records
    window = index.read(3, 13, 16)  # episode 3, frames 13..28: records 1, 2, 3 of that episode
    np.testing.assert_array_equal(window["frames"][:, 0, 0, 0], np.arange(13, 29))
    assert len(read) == 3 and read == sorted(read)
    slots = WindowSlots(index, 8)
    crop = CropWindow(slots, seed=0)
    for i in range(len(slots)):  # every training window of an epoch: 8 frames lie in at most 2 records
        read.clear()
        window = crop.map_with_index(i, slots[i])["frames"][:, 0, 0, 0]
        assert len(read) <= 2 and np.all(np.diff(window) == 1)


def test_bench_data_compares_layouts(tmp_path, capsys):
    from jasmine.bench import BenchDataArgs, bench_data

    write_synthetic(tmp_path / "v2", chunk_len=20)
    res = bench_data(
        BenchDataArgs(
            dir=tmp_path / "v2",
            batch_size=4,
            seq_len=8,
            batches=3,
            num_workers=(0,),
            step="none",
            scratch=tmp_path / "scratch",
        )
    )
    out = capsys.readouterr().out
    assert set(res) == {2, 3} and res[3]["chunk_len"] == 8 and res[3][0] > 0 and res[2][0] > 0
    assert "format 3 vs 2: workers=0" in out and (tmp_path / "scratch" / "format3" / "metadata.json").exists()
