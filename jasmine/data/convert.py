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
    max_frames: int = 20_000
    """Keep at most each source's first this-many frames (the summary names every source cut short): frames are
    fitted as they are decoded, so this bounds a decoding process's memory."""
    max_pixels: int = 4096 * 4096
    """Refuse (skip, by name) a source whose frames have more pixels than this, before decoding any of them."""
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


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse a frame of ``size`` (width, height) over ``max_pixels``, before it is decoded."""
    w, h = size
    if w * h > max_pixels:
        raise DataError(f"frames of {w}x{h} = {w * h:,} pixels exceed --max-pixels {max_pixels:,}")


class Frames:
    """Fitted frames collected as they are decoded: at most ``max_frames`` (``truncated`` once a frame past them
    came), in one array that grows by doubling, so a source is never held at full size or whole in a list."""

    def __init__(self, hw: tuple[int, int], fit: str, max_frames: int):
        self.hw, self.fit, self.max_frames = hw, fit, max_frames
        self.buf_THWC = np.zeros((0, *hw, 3), np.uint8)
        self.n, self.truncated = 0, False

    def add(self, img: Image.Image) -> None:
        if self.n >= self.max_frames:
            self.truncated = True
            return
        if self.n == len(self.buf_THWC):
            grown = np.zeros((min(max(16, 2 * self.n), self.max_frames), *self.hw, 3), np.uint8)
            grown[: self.n] = self.buf_THWC
            self.buf_THWC = grown
        self.buf_THWC[self.n] = fit_frame(img, self.hw, self.fit)
        self.n += 1

    def array(self) -> np.ndarray:
        if not self.n:
            raise DataError("no frames decoded")
        return self.buf_THWC[: self.n]


def _gif_frames(path: Path, fps: float, out: Frames, max_pixels: int) -> None:
    """A GIF's frames into ``out``, fitted one at a time, resampled to ``fps`` by their display durations (PIL;
    FFmpeg reads GIFs poorly). The canvas size is checked before the first frame is decoded."""
    from PIL import ImageSequence

    with Image.open(path) as gif:
        check_pixels(gif.size, max_pixels)
        j, end_ms = 0, 0  # the next output frame (at j / fps seconds) and the current frame's display end
        for frame in ImageSequence.Iterator(gif):
            if out.n >= out.max_frames:
                out.truncated = True
                break
            end_ms += frame.info.get("duration", 100) or 100
            if fps <= 0:
                out.add(frame)
                continue
            while j * 1000.0 / fps < end_ms and out.n < out.max_frames:  # output times within this frame's display
                out.add(frame)
                j += 1


def decode_video(path: Path, hw: tuple[int, int], fit: str, fps: float, max_frames: int = 20_000,
                 max_pixels: int = 4096 * 4096) -> tuple[np.ndarray, bool]:  # fmt: skip
    """A source's fitted frames [T, H, W, 3] (at most ``max_frames``), and whether frames past them were dropped."""
    out = Frames(hw, fit, max_frames)
    if path.suffix.lower() == ".gif":
        _gif_frames(path, fps, out, max_pixels)
    else:
        import imageio.v2 as iio

        fps_filter = {"output_params": ["-vf", f"fps={fps}"]} if fps > 0 else {}  # exact: duration x fps frames
        reader = iio.get_reader(path, format="FFMPEG", **fps_filter)
        try:
            check_pixels(reader.get_meta_data()["size"], max_pixels)
            for f in reader:
                if out.n >= max_frames:
                    out.truncated = True
                    break  # FFmpeg stops here: the rest of a long video is never decoded
                out.add(Image.fromarray(f))
        finally:
            reader.close()
    return out.array(), out.truncated


def decode_images(folder: Path, hw: tuple[int, int], fit: str, max_frames: int = 20_000,
                  max_pixels: int = 4096 * 4096) -> tuple[np.ndarray, bool]:  # fmt: skip
    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=_natural)
    out = Frames(hw, fit, max_frames)
    for f in files[:max_frames]:
        try:
            with Image.open(f) as img:
                check_pixels(img.size, max_pixels)
                out.add(img)
        except DataError as e:
            raise DataError(f"{f}: {e}") from e
        except Exception as e:  # PIL raises many types for a bad file
            raise DataError(f"{f}: not a readable image ({e})") from e
    return out.array(), len(files) > max_frames


def _decode(job) -> tuple[np.ndarray | None, bool, str | None]:
    kind, path, hw, fit, fps, max_frames, max_pixels = job
    try:
        if kind == "video":
            return (*decode_video(path, hw, fit, fps, max_frames, max_pixels), None)
        return (*decode_images(path, hw, fit, max_frames, max_pixels), None)
    except Exception as e:  # reported by name and skipped; a broken source must not stop the others
        return None, False, f"{path}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"


def convert(args: ConvertArgs, kind: Literal["video", "images"]) -> dict:
    """Write the dataset; returns its metadata (with ``skipped``: unreadable and too-short sources)."""
    hw = frame_size(args.size)
    if min(args.chunk_len, args.min_len, args.max_frames, args.max_pixels) < 1 or args.workers < 0:
        raise DataError("--chunk-len, --min-len, --max-frames and --max-pixels must be >= 1 and --workers >= 0")
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
    errors, short, truncated, kept = [], [], [], {s: [] for s in splits}
    t0 = time.perf_counter()
    pool = get_context("spawn").Pool(args.workers) if args.workers > 0 else None
    try:
        job_args = [(kind, p, hw, args.fit, fps, args.max_frames, args.max_pixels) for _, p in jobs]
        results = (pool.imap if pool else map)(_decode, job_args)
        with tqdm(total=len(jobs), unit="src", desc=kind, dynamic_ncols=True) as bar:
            for (split, path), (frames, cut, err) in zip(jobs, results, strict=False):
                bar.update()
                if cut:
                    truncated.append(f"{path}: kept its first {args.max_frames} frames (--max-frames)")
                    tqdm.write(f"truncated {truncated[-1]}")
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
    meta["skipped"] = {"unreadable": errors, "too_short": short, "truncated": truncated}
    return meta
