"""`jasmine data video` and `jasmine data images`: round trip into the loader, determinism, splits, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image

from jasmine.data.convert import ImagesArgs, VideoArgs, assign_splits, convert
from jasmine.data.dataset import DataError, iter_records, read_metadata
from jasmine.data.loader import make_loader


def write_video(path: Path, values: list[int], shape=(48, 80)) -> None:
    import imageio.v2 as iio

    w = iio.get_writer(path, fps=10, codec="libx264", macro_block_size=1, quality=9)
    for v in values:
        w.append_data(np.full((*shape, 3), v, np.uint8))
    w.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for k in range(5):
        write_video(root / f"clip{k}.mp4", [(40 * k + 4 * t) % 256 for t in range(24)])
    frames = [Image.fromarray(np.full((20, 30, 3), 10 * t, np.uint8)) for t in range(20)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    write_video(root / "short.mp4", [0, 1, 2])
    return root


def episodes(root: Path) -> dict[str, list[np.ndarray]]:
    meta = read_metadata(root)
    out = {}
    for split in meta["splits"]:
        out[split] = [arrays["frames"] for arrays, _ in iter_records(root, meta, split)]
    return out


def test_video_round_trip_splits_skips_and_determinism(videos, tmp_path):
    args = VideoArgs(
        inputs=(videos,),
        out=tmp_path / "a",
        size="32x32",
        min_len=8,
        chunk_len=10,
        val_fraction=0.2,
        test_fraction=0.2,
        workers=0,
    )
    meta = convert(args, "video")
    (unreadable,) = meta["skipped"]["unreadable"]
    assert (
        unreadable.startswith(str(videos / "broken.mp4") + ": ")
        and "short.mp4: 3 frames < --min-len 8" in meta["skipped"]["too_short"][0]
    )
    sources = {s: meta["splits"][s]["sources"] for s in meta["splits"]}
    names = [Path(p).name for ps in sources.values() for p in ps]
    assert sorted(names) == sorted(["anim.gif"] + [f"clip{k}.mp4" for k in range(5)])  # disjoint, all readable kept
    dealt = assign_splits(sorted(p for p in videos.iterdir()), 0.2, 0.2, 0)  # by file, before decoding
    assert {s: len(v) for s, v in dealt.items()} == {"train": 4, "val": 2, "test": 2}
    assert all(set(sources[s]) <= {str(p) for p in dealt[s]} for s in sources)
    assert meta["num_actions"] == 0 and meta["frame_shape"] == [32, 32, 3]
    eps = episodes(tmp_path / "a")
    assert all(len(r) <= 10 for rs in eps.values() for r in rs)  # records of at most --chunk-len frames
    train = make_loader(tmp_path / "a", "train", seq_len=8, batch_size=2, seed=0, image_shape=(32, 32, 3))
    batch = next(iter(train))
    assert batch["frames"].shape == (2, 8, 32, 32, 3) and "actions" not in batch
    # a flat grey clip stays a flat grey clip, frame by frame, through the lossy codec and the resize
    first = {Path(p).name: split for split, ps in sources.items() for p in ps}
    split = first["clip1.mp4"]
    idx = [Path(p).name for p in sources[split]].index("clip1.mp4")
    lengths = read_metadata(tmp_path / "a")["splits"][split]["episode_lengths"]
    start = sum(lengths[:idx])
    frames = np.concatenate(eps[split])[start : start + lengths[idx]]
    assert len(frames) == 24
    np.testing.assert_allclose(frames.reshape(24, -1).mean(1), [40 + 4 * t for t in range(24)], atol=3)
    # parallel decoding writes the same bytes as sequential
    convert(VideoArgs(**{**vars(args), "out": tmp_path / "b", "workers": 2}), "video")
    for shard in sorted((tmp_path / "a").rglob("*.array_record")):
        assert shard.read_bytes() == (tmp_path / "b" / shard.relative_to(tmp_path / "a")).read_bytes()


def test_video_fps_resampling_and_crop(videos, tmp_path):
    meta = convert(
        VideoArgs(
            inputs=(videos / "clip0.mp4", videos / "anim.gif"),
            out=tmp_path / "f",
            size="16x24",
            fit="crop",
            fps=5,
            min_len=4,
            val_fraction=0,
            test_fraction=0,
            workers=0,
        ),
        "video",
    )
    assert meta["frame_shape"] == [16, 24, 3]
    assert sorted(meta["splits"]["train"]["episode_lengths"]) == [10, 12]  # 2.0 s and 2.4 s at 5 frames/s


def test_image_folders_in_natural_order_exactly(tmp_path):
    for e in range(3):
        for t in range(12):
            d = tmp_path / "in" / f"episode{e}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 20 * e + t, np.uint8)).save(d / f"frame{t}.png")
    meta = convert(
        ImagesArgs(
            inputs=(tmp_path / "in",),
            out=tmp_path / "ds",
            size="16x16",
            min_len=4,
            val_fraction=0.34,
            test_fraction=0.0,
            workers=0,
        ),
        "images",
    )
    eps = episodes(tmp_path / "ds")
    for split, paths in ((s, meta["splits"][s]["sources"]) for s in meta["splits"]):
        for path, frames in zip(paths, eps[split], strict=False):
            e = int(path[-1])
            np.testing.assert_array_equal(frames[:, 0, 0, 0], 20 * e + np.arange(12))  # frame10 after frame9
    assert sorted(len(meta["splits"][s]["sources"]) for s in meta["splits"]) == [1, 2]


def test_long_sources_are_cut_at_max_frames_and_named(videos, tmp_path):
    meta = convert(
        VideoArgs(inputs=(videos / "clip0.mp4", videos / "anim.gif"), out=tmp_path / "f", size="8x8", min_len=4,
                  max_frames=9, val_fraction=0, test_fraction=0, workers=0),
        "video",
    )  # fmt: skip
    assert meta["splits"]["train"]["episode_lengths"] == [9, 9]
    assert sorted(Path(t.split(":")[0]).name for t in meta["skipped"]["truncated"]) == ["anim.gif", "clip0.mp4"]
    frames = np.concatenate(episodes(tmp_path / "f")["train"])
    gif = frames[:9] if meta["splits"]["train"]["sources"][0].endswith("gif") else frames[9:]
    np.testing.assert_array_equal(gif[:, 0, 0, 0], 10 * np.arange(9))  # the first 9 frames, in order


def test_oversized_frames_are_refused_before_decoding(tmp_path):
    """A GIF declaring a 3000x3000 canvas (a few KB on disk) is refused by --max-pixels, naming the file."""
    big = [Image.new("P", (3000, 3000), c) for c in range(3)]
    (tmp_path / "in").mkdir()
    big[0].save(tmp_path / "in" / "bomb.gif", save_all=True, append_images=big[1:])
    frames = [Image.fromarray(np.full((20, 30, 3), 10 * t, np.uint8)) for t in range(20)]
    frames[0].save(tmp_path / "in" / "ok.gif", save_all=True, append_images=frames[1:])
    meta = convert(
        VideoArgs(inputs=(tmp_path / "in",), out=tmp_path / "ds", size="8x8", min_len=4, max_pixels=1_000_000,
                  val_fraction=0, test_fraction=0, workers=0),
        "video",
    )  # fmt: skip
    (err,) = meta["skipped"]["unreadable"]
    assert err.startswith(str(tmp_path / "in" / "bomb.gif"))
    assert "3000x3000 = 9,000,000 pixels exceed --max-pixels" in err
    assert meta["splits"]["train"]["episodes"] == 1


def test_a_gif_is_fitted_frame_by_frame(tmp_path):
    """40 distinct 2000x2000 frames (16 MB each in PIL) decode in a child whose peak memory stays far below
    holding them all (640 MB, as converting every frame before fitting did)."""
    import subprocess
    import sys

    big = [Image.new("P", (2000, 2000), c) for c in range(40)]
    big[0].save(tmp_path / "long.gif", save_all=True, append_images=big[1:])
    code = (  # VmHWM: this process's peak resident memory (ru_maxrss would carry over the parent's across exec)
        "import re, sys; from pathlib import Path; from jasmine.data.convert import decode_video; "
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]); base = hwm(); "
        "frames, cut = decode_video(Path(sys.argv[1]), (8, 8), 'resize', 0.0); "
        "print(len(frames), cut, (hwm() - base) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "long.gif")], capture_output=True, text=True)
    n, cut, peak_mb = out.stdout.split()
    assert (n, cut) == ("40", "False") and int(peak_mb) < 200, out.stdout + out.stderr


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"inputs": (Path("/no/such/dir"),)}, r"--in /no/such/dir does not exist"),
        ({"size": "64"}, r"--size '64' is not HxW"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"leaves nothing to train on"),
        ({"test_fraction": 1.5}, r"--test-fraction must be in \[0, 1\)"),
        ({"min_len": 1000}, r"no readable source of at least --min-len 1000 frames went to train"),
        ({"max_frames": 0}, r"--max-frames and --max-pixels must be >= 1"),
    ],
)
def test_bad_conversion_input_is_named(videos, tmp_path, kw, match):
    args = VideoArgs(**{"inputs": (videos,), "out": tmp_path / "x", "workers": 0, **kw})
    with pytest.raises(DataError, match=match):
        convert(args, "video")
    assert not (tmp_path / "x" / "metadata.json").exists()


def test_empty_input_and_unreadable_frames_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no folders of PNG/JPEG frames under --in .*empty"):
        convert(ImagesArgs(inputs=(tmp_path / "empty",), out=tmp_path / "x", workers=0), "images")
    good, bad = tmp_path / "in" / "good", tmp_path / "in" / "bad"
    for d in (good, bad):
        d.mkdir(parents=True)
        for t in range(5):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / f"{t}.png")
    (bad / "3.png").write_bytes(b"garbage")
    meta = convert(
        ImagesArgs(
            inputs=(tmp_path / "in",),
            out=tmp_path / "ds",
            size="8x8",
            min_len=2,
            val_fraction=0,
            test_fraction=0,
            workers=0,
        ),
        "images",
    )
    assert meta["splits"]["train"]["episodes"] == 1
    assert (
        len(meta["skipped"]["unreadable"]) == 1
        and "bad/3.png: not a readable image" in meta["skipped"]["unreadable"][0]
    )


def test_dedup_finds_a_planted_cross_split_duplicate(tmp_path, capsys):
    from jasmine.data.dataset import DatasetWriter
    from jasmine.data.dedup import find_duplicates

    rng = np.random.default_rng(0)
    eps = [rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8) for _ in range(4)]
    eps[1][5] = eps[1][2]  # a frame repeated inside a train episode
    w = DatasetWriter(tmp_path / "ds", frame_shape=(8, 8, 3), num_actions=3, source="t", generator={}, chunk_len=5)
    acts = np.arange(12) % 3
    for e in (0, 1):
        w.add_episode("train", eps[e], acts, {})
    w.add_episode("test", eps[2], acts, {})
    w.add_episode("test", eps[0], acts, {})  # planted: train episode 0 again, in test
    w.add_episode("val", eps[3], acts, {})
    w.finish()
    report = find_duplicates(tmp_path / "ds", progress=False)
    assert report["episodes"]["shared_across_splits"] == {"test/train": 1}
    assert sorted(report["episodes"]["examples"][0]) == [["test", 1], ["train", 0]]
    assert report["frames"]["shared_across_splits"] == {"test/train": 12}
    assert report["frames"]["duplicates_within_split"] == {"train": 1}
    assert report["episodes"]["duplicates_within_split"] == {}
    cmd = ["data", "dedup", tmp_path / "ds"]
    assert cli(*cmd).returncode == 0
    res = cli(*cmd, "--fail-on-cross-split")
    assert res.returncode == 1 and "share content" in res.stderr
    assert json.loads((tmp_path / "ds" / "dedup.json").read_text())["episodes"]["unique_episodes"] == 4
