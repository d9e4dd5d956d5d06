import json
import subprocess
import sys

import numpy as np
import pytest

from jasmine.data.coinrun import CoinRunArgs, generate, level_ranges
from jasmine.data.dataset import DataError, read_metadata
from jasmine.data.dataset import iter_records

pytest.importorskip("procgen")


def small(out, seed=0, **kw):
    args = dict(train_episodes=4, val_episodes=2, test_episodes=2, seed=seed, max_episode_len=60, chunk_len=25,
                num_envs=4, records_per_shard=3)
    return CoinRunArgs(out=out, **{**args, **kw})


def shard_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.array_record"))}


@pytest.fixture(scope="module")
def coinrun_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("coinrun") / "a"
    generate(small(root))
    return root


def test_episodes_have_the_case_study_format(coinrun_dir):
    meta = read_metadata(coinrun_dir)
    assert meta["frame_shape"] == [64, 64, 3] and meta["num_actions"] == 15
    assert {s: meta["splits"][s]["episodes"] for s in ("train", "val", "test")} == {"train": 4, "val": 2, "test": 2}
    assert meta["generator"]["args"]["seed"] == 0
    for arrays, rec in iter_records(coinrun_dir, meta, "train"):
        assert arrays["frames"].dtype == np.uint8 and arrays["frames"].shape[1:] == (64, 64, 3)
        assert arrays["actions"].dtype == np.int32 and arrays["actions"].shape == arrays["frames"].shape[:1]
        assert 0 <= arrays["actions"].min() and arrays["actions"].max() < 15
        assert len(arrays["frames"]) <= 25 and {"source", "level_seed", "episode_id", "chunk_index"} <= rec.keys()
    assert all(16 <= n <= 60 for n in meta["splits"]["train"]["episode_lengths"])


def test_same_arguments_give_byte_identical_records(coinrun_dir, tmp_path):
    generate(small(tmp_path / "b"))
    assert shard_bytes(coinrun_dir) == shard_bytes(tmp_path / "b")
    strip = lambda m: {k: v for k, v in m.items()}
    assert strip(read_metadata(coinrun_dir)) == strip(read_metadata(tmp_path / "b"))
    generate(small(tmp_path / "c", seed=1))
    assert shard_bytes(tmp_path / "c") != shard_bytes(coinrun_dir)


def test_splits_use_disjoint_level_ranges(coinrun_dir):
    meta = read_metadata(coinrun_dir)
    ranges = level_ranges(small(coinrun_dir))
    spans = sorted(ranges.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for split, (lo, hi) in ranges.items():
        assert meta["splits"][split]["level_seeds"] == [lo, hi]
        for _, rec in iter_records(coinrun_dir, meta, split):
            assert lo <= rec["level_seed"] < hi


def test_existing_dataset_needs_overwrite(coinrun_dir):
    with pytest.raises(DataError, match="already holds a dataset.*--overwrite"):
        generate(small(coinrun_dir))


def test_cli_generates_and_inspects(tmp_path):
    out = tmp_path / "cli"
    run = lambda *a: subprocess.run([sys.executable, "-m", "jasmine.cli", *a], capture_output=True, text=True, check=True)
    gen = run("data", "coinrun", "--out", str(out), "--train-episodes", "2", "--val-episodes", "1",
              "--test-episodes", "1", "--max-episode-len", "40", "--num-envs", "2")
    assert "frames/s" in gen.stdout and "train" in gen.stdout
    insp = run("data", "inspect", str(out), "--episodes", "2")
    assert "action histogram" in insp.stdout and "episode length" in insp.stdout
    assert (out / "inspect" / "contact_sheet.png").stat().st_size > 0
    assert (out / "inspect" / "episodes.gif").stat().st_size > 0
    bench = run("bench", "data", str(out), "--batch-size", "2", "--batches", "3", "--num-workers", "0")
    assert "frames/s" in bench.stdout
