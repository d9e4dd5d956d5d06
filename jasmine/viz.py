"""Pictures: frame grids, GIFs and MP4s from uint8 or [0, 1] frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(frames) -> np.ndarray:
    frames = np.asarray(frames)
    return frames if frames.dtype == np.uint8 else (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def side_by_side(*videos_THWC, gap: int = 2) -> np.ndarray:
    """Concatenate videos [T, H, W, C] horizontally with white gaps."""
    vids = [to_uint8(v) for v in videos_THWC]
    T, H, _, C = vids[0].shape
    sep = np.full((T, H, gap, C), 255, np.uint8)
    parts = [p for v in vids for p in (v, sep)][:-1]
    return np.concatenate(parts, axis=2)


def stack_rows(*videos_THWC, gap: int = 2) -> np.ndarray:
    vids = [to_uint8(v) for v in videos_THWC]
    T, _, W, C = vids[0].shape
    sep = np.full((T, gap, W, C), 255, np.uint8)
    return np.concatenate([p for v in vids for p in (v, sep)][:-1], axis=1)


def frame_grid(rows_RTHWC, max_frames: int = 8) -> np.ndarray:
    """One uint8 image: each row's first ``max_frames`` frames side by side, rows stacked."""
    strips = [side_by_side(*[f[None] for f in np.asarray(r)[:max_frames]]) for r in rows_RTHWC]
    return stack_rows(*strips)[0]


def write_gif(path, frames_THWC, fps: int = 8, scale: int = 2) -> None:
    """A looping GIF (to a path or a binary file object), nearest-neighbour upscaled by ``scale``."""
    frames = to_uint8(frames_THWC).repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_mp4(path: Path, frames_THWC, fps: int = 8, scale: int = 4) -> bool:
    """An H.264 MP4 (needs imageio-ffmpeg); returns False if no encoder is available."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        return False
    frames = to_uint8(frames_THWC).repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 16 and 16 - h % 16), (0, w % 16 and 16 - w % 16), (0, 0)))
    try:
        imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=16)
    except Exception:  # no ffmpeg binary
        return False
    return True
