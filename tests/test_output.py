"""Dataset writers never lose a user's files: outputs that are, contain or sit inside an input are refused, a
non-empty folder that is not a jasmine dataset is never written over (even with --overwrite), and --overwrite keeps
the old dataset readable until the new one is complete."""

import hashlib

import numpy as np
import pytest
from conftest import cli, write_synthetic
from PIL import Image

from jasmine.data.dataset import DataError, DatasetWriter, iter_records, read_metadata


def snapshot(root):
    """Every file under ``root`` and its content hash."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def frame_folders(root, episodes=2, frames=4):
    rng = np.random.default_rng(0)
    for e in range(episodes):
        (root / f"ep{e}").mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"ep{e}" / f"{t}.png")


def writer(root, **kw):
    return DatasetWriter(root, frame_shape=(8, 8, 3), num_actions=7, source="t", generator={}, **kw)


def records(root):
    return [a["frames"].tobytes() for a, _ in iter_records(root, read_metadata(root), "train")]


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_an_output_that_is_contains_or_sits_inside_an_input_is_refused_and_nothing_is_touched(tmp_path, where):
    clips = tmp_path / "clips"
    frame_folders(clips / "train")  # the user's frames, in a folder named like a split
    out = {"same": clips, "parent": tmp_path, "inside": clips / "train" / "new"}[where]
    before = snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        res = cli(
            "data", "images", "--in", str(clips), "--out", str(out), "--size", "8x8", "--min-len", "2", *overwrite
        )
        assert res.returncode != 0 and "the input" in res.stderr, res.stderr
        assert snapshot(tmp_path) == before
    res = cli("data", "import-jasmine", "--in", str(clips), "--out", str(clips))
    assert res.returncode != 0 and "is the input" in res.stderr
    assert snapshot(tmp_path) == before


def test_a_folder_that_is_not_a_jasmine_dataset_is_never_written_over(tmp_path):
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "train" / "holiday.mp4").write_bytes(b"precious")
    (mine / "notes.txt").write_text("mine")
    before = snapshot(mine)
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not a jasmine dataset.*never deletes"):
            writer(mine, overwrite=overwrite)
    assert snapshot(mine) == before
    write_synthetic(tmp_path / "ds")
    (tmp_path / "ds" / "my-notes.txt").write_text("mine")  # a user's file inside a jasmine dataset
    with pytest.raises(DataError, match="also holds my-notes.txt"):
        writer(tmp_path / "ds", overwrite=True)
    assert (tmp_path / "ds" / "my-notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    w = writer(empty)  # an empty folder is fine
    w.add_episode("train", np.zeros((3, 8, 8, 3), np.uint8), np.zeros(3), {})
    w.finish()
    assert read_metadata(empty)["splits"]["train"]["episodes"] == 1


def test_overwrite_keeps_the_old_dataset_readable_until_the_new_one_is_complete(tmp_path):
    root = tmp_path / "ds"
    write_synthetic(root)
    old = records(root)
    with pytest.raises(DataError, match="already holds a dataset.*--overwrite"):
        writer(root)
    w = writer(root, overwrite=True)
    w.add_episode("train", np.full((5, 8, 8, 3), 7, np.uint8), np.zeros(5), {})
    assert records(root) == old  # mid-write (or killed here): the old dataset is intact and readable
    w.abort()
    assert records(root) == old and [p.name for p in tmp_path.iterdir()] == ["ds"]  # nothing staged is left behind
    w = writer(root, overwrite=True)
    w.add_episode("train", np.full((5, 8, 8, 3), 7, np.uint8), np.zeros(5), {})
    w.finish()
    assert records(root) == [np.full((5, 8, 8, 3), 7, np.uint8).tobytes()]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # the old copy is gone once the new one is in place
