"""Your own footage as a jasmine dataset: video files (``jasmine data video``) and folders of
frames (``jasmine data images``).

Dimension key: T frames, H/W/C height/width/channels.

Each source (a video file, or a folder holding one episode's frames) becomes one
action-free episode (``num_actions`` 0: train a LAM on it). Sources are sorted, shuffled
with ``--seed`` and dealt to test, val and train by ``--test-fraction`` / ``--val-fraction``,
so the splits are disjoint by source and the dataset is a deterministic function of the
arguments. Sources are decoded in parallel (``--workers``) but written in order. A source
that cannot be read is reported by name and skipped; the summary counts them.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro
from PIL import Image
from tqdm import tqdm

from jasmine.data.dataset import DataError, DatasetWriter
from jasmine.data.output import check_output

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".gif", ".mov")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ConvertArgs:
    """Options shared by the converters."""

    inputs: Annotated[tuple[Path, ...], tyro.conf.arg(name="in")]
    """Input files or folders."""
    out: Path
    """Output dataset directory."""
    size: str = "64x64"
    """Frame size HxW."""
    fit: Literal["resize", "crop"] = "resize"
    """resize: scale to HxW (aspect ratio may change); crop: centre-crop to HxW's aspect ratio, then scale."""
    chunk_len: int = 160
    """Episodes are stored as records of at most this many frames."""
    min_len: int = 16
    """Sources with fewer frames are skipped (counted in the summary)."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    """Seed of the split assignment."""
    workers: int = 2
    """Decoding processes."""
    records_per_shard: int = 100
    overwrite: bool = False
    """Replace an existing dataset in --out."""


@dataclass(frozen=True)
class VideoArgs(ConvertArgs):
    """Video files (mp4, webm, mkv, avi, gif, mov; decoded by the FFmpeg binary of imageio-ffmpeg) → a dataset."""

    fps: float = 0.0
    """Resample to this frame rate (0 = the source's)."""


@dataclass(frozen=True)
class ImagesArgs(ConvertArgs):
    """Folders of PNG/JPEG frames, one folder per episode, frames in name order (natural: 2 before 10)."""


def frame_size(size: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", size)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise DataError(f"--size {size!r} is not HxW, e.g. --size 64x64")
    return int(m[1]), int(m[2])


def fit_frame(img: Image.Image, hw: tuple[int, int], fit: str) -> np.ndarray:
    """An RGB uint8 [H, W, 3] frame: ``img`` scaled to ``hw`` (centre-cropped to its aspect first for ``crop``)."""
    h, w = hw
    img = img.convert("RGB")
    if fit == "crop":
        sw, sh = img.size
        scale = min(sw / w, sh / h)
        cw, ch = round(w * scale), round(h * scale)
        left, top = (sw - cw) // 2, (sh - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), np.uint8)


def _natural(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def find_sources(inputs: tuple[Path, ...], kind: str) -> list[Path]:
    """Video files (``kind`` video) or frame folders (``kind`` images) under ``inputs``, sorted."""
    if not inputs:
        raise DataError("--in needs at least one file or folder")
    found: set[Path] = set()
    for p in inputs:
        if not p.exists():
            raise DataError(f"--in {p} does not exist")
        if kind == "video":
            if p.is_file():
                found.add(p)
            else:
                found.update(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
        else:
            if not p.is_dir():
                raise DataError(f"--in {p} is not a folder (images wants folders of frames, one per episode)")
            dirs = [p] + [d for d in p.rglob("*") if d.is_dir()]
            found.update(d for d in dirs if any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir() if f.is_file()))
    if not found:
        what = f"video files ({', '.join(VIDEO_EXTS)})" if kind == "video" else "folders of PNG/JPEG frames"
        raise DataError(f"no {what} under --in {' '.join(map(str, inputs))}")
    return sorted(found)


def assign_splits(sources: list[Path], val: float, test: float, seed: int) -> dict[str, list[Path]]:
    """Disjoint split of the sources: a seeded shuffle dealt to test, val, then train."""
    for name, f in (("--val-fraction", val), ("--test-fraction", test)):
        if not 0 <= f < 1:
            raise DataError(f"{name} must be in [0, 1), got {f}")
    if val + test >= 1:
        raise DataError(f"--val-fraction + --test-fraction = {val + test} leaves nothing to train on")
    order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
    n_test, n_val = round(len(order) * test), round(len(order) * val)
    if len(order) - n_test - n_val < 1:
        raise DataError(
            f"{len(order)} source(s) cannot fill train, val and test at these fractions; add sources "
            f"or lower --val-fraction / --test-fraction"
        )
    return {"train": order[n_test + n_val :], "val": order[n_test : n_test + n_val], "test": order[:n_test]}


def _gif_frames(path: Path, fps: float):
    """A GIF's frames, resampled to ``fps`` by their display durations (PIL; FFmpeg reads GIFs poorly)."""
    from PIL import ImageSequence

    with Image.open(path) as gif:
        frames = [(f.convert("RGB"), f.info.get("duration", 100) or 100) for f in ImageSequence.Iterator(gif)]
    if fps <= 0:
        return [f for f, _ in frames]
    ends = np.cumsum([d for _, d in frames]) / 1000.0
    times = np.arange(0.0, ends[-1], 1.0 / fps)
    return [frames[int(np.searchsorted(ends, t, side="right"))][0] for t in times]


def decode_video(path: Path, hw: tuple[int, int], fit: str, fps: float) -> np.ndarray:
    if path.suffix.lower() == ".gif":
        frames = [fit_frame(f, hw, fit) for f in _gif_frames(path, fps)]
    else:
        import imageio.v2 as iio

        fps_filter = {"output_params": ["-vf", f"fps={fps}"]} if fps > 0 else {}  # exact: duration x fps frames
        reader = iio.get_reader(path, format="FFMPEG", **fps_filter)
        try:
            frames = [fit_frame(Image.fromarray(f), hw, fit) for f in reader]
        finally:
            reader.close()
    if not frames:
        raise DataError("no frames decoded")
    return np.stack(frames)


def decode_images(folder: Path, hw: tuple[int, int], fit: str) -> np.ndarray:
    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=_natural)
    frames = []
    for f in files:
        try:
            with Image.open(f) as img:
                frames.append(fit_frame(img, hw, fit))
        except Exception as e:  # PIL raises many types for a bad file
            raise DataError(f"{f}: not a readable image ({e})") from e
    return np.stack(frames)


def _decode(job) -> tuple[np.ndarray | None, str | None]:
    kind, path, hw, fit, fps = job
    try:
        frames = decode_video(path, hw, fit, fps) if kind == "video" else decode_images(path, hw, fit)
        return frames, None
    except Exception as e:  # reported by name and skipped; a broken source must not stop the others
        return None, f"{path}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"


def convert(args: ConvertArgs, kind: Literal["video", "images"]) -> dict:
    """Write the dataset; returns its metadata (with ``skipped``: unreadable and too-short sources)."""
    hw = frame_size(args.size)
    if args.chunk_len < 1 or args.min_len < 1 or args.workers < 0:
        raise DataError("--chunk-len and --min-len must be >= 1 and --workers >= 0")
    check_output(args.out, args.overwrite, inputs=args.inputs)  # before reading a single source
    sources = find_sources(args.inputs, kind)
    splits = assign_splits(sources, args.val_fraction, args.test_fraction, args.seed)
    fps = getattr(args, "fps", 0.0)
    gen_args = {
        k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "inputs" else v)
        for k, v in asdict(args).items()
        if k not in ("out", "overwrite")
    }
    writer = DatasetWriter(
        args.out,
        frame_shape=(*hw, 3),
        num_actions=0,
        source=kind,
        generator={"name": kind, **gen_args},
        chunk_len=args.chunk_len,
        records_per_shard=args.records_per_shard,
        overwrite=args.overwrite,
        inputs=args.inputs,
    )
    jobs = [(split, p) for split in ("train", "val", "test") for p in splits[split]]
    errors, short, kept = [], [], {s: [] for s in splits}
    t0 = time.perf_counter()
    pool = get_context("spawn").Pool(args.workers) if args.workers > 0 else None
    try:
        results = (pool.imap if pool else map)(_decode, [(kind, p, hw, args.fit, fps) for _, p in jobs])
        with tqdm(total=len(jobs), unit="src", desc=kind, dynamic_ncols=True) as bar:
            for (split, path), (frames, err) in zip(jobs, results, strict=False):
                bar.update()
                if err is not None:
                    errors.append(err)
                    tqdm.write(f"skipped {err}")
                elif len(frames) < args.min_len:
                    short.append(f"{path}: {len(frames)} frames < --min-len {args.min_len}")
                else:
                    writer.add_episode(split, frames, None, {"source": str(path), "episode_id": len(kept[split])})
                    kept[split].append(str(path))
                    bar.set_postfix(frames=sum(i.frames for i in writer.splits.values()), refresh=False)
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool:
            pool.terminate()
    if not kept["train"]:
        writer.abort()
        raise DataError(
            f"no readable source of at least --min-len {args.min_len} frames went to train "
            f"({len(errors)} unreadable, {len(short)} too short)"
        )
    meta = writer.finish(**{s: {"sources": kept[s]} for s in kept if kept[s]})
    meta["seconds"] = time.perf_counter() - t0
    meta["skipped"] = {"unreadable": errors, "too_short": short}
    return meta
