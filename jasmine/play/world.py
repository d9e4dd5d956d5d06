"""What ``jasmine play`` serves: a loaded world model (``Game``), its key bindings, and one ``World`` per tab.

Dimension key: B batch (1 here), C context frames, N tokens per frame, H/W/Ch frame shape,
K action codes (LAM codes, or the dataset's actions for ``--gt-actions`` runs), A real actions.

A ``World`` starts from C frames (a held-out episode's first frames, or an uploaded image)
and advances one frame per action with the cached sampler's ``Stream``; the tokenizer decodes
each new frame within its chunk (the encoding rule of ``jasmine.models.genie``).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from jasmine.data.convert import fit_frame
from jasmine.data.dataset import DataError, action_meanings, read_metadata
from jasmine.data.loader import EpisodeIndex
from jasmine.eval.actions import action_mapping, measure, summary_lines
from jasmine.eval.steering import bind_keys
from jasmine.sample.clips import InferenceDtype, compute_dtype, infer_actions, load_genie, num_action_codes
from jasmine.sample.rollout import Rollout, SampleOptions
from jasmine.viz import write_gif

MAX_UPLOAD_PIXELS = 4096 * 4096


class PlayError(ValueError):
    """A request play refuses; its message goes back to the page and the server carries on."""


@dataclass
class Bindings:
    """Keys to codes, and each code's label: what the page shows and sends."""

    labels: list[str]
    keys: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_codes(
        cls,
        num_codes: int,
        *,
        meanings: list[str] | None = None,
        counts_KA: np.ndarray | None = None,
        gt_actions: bool = False,
    ) -> Bindings:
        """Number keys 1..9 pick codes 0..8 directly; arrows and space bind to matching real actions.

        With ``gt_actions`` the codes are the dataset's actions (named by ``meanings``); with a LAM
        and ``counts_KA`` (code × real action counts, ``jasmine actions``) codes are labelled by their
        dominant actions and keys bound to ``best_code``; with neither, only number keys bind.
        """
        names = meanings or []
        if gt_actions:
            labels = [names[k] if k < len(names) else f"action {k}" for k in range(num_codes)]
        elif counts_KA is not None:
            rows = action_mapping(counts_KA, top=2, meanings=meanings)
            labels = [
                f"code {r['code']}: " + (", ".join(f"{a['name']} {a['p']:.0%}" for a in r["actions"]) or "unused")
                for r in rows
            ]
        else:
            labels = [f"code {k}" for k in range(num_codes)]
        keys = {str(k + 1): k for k in range(min(num_codes, 9))}
        keys.update(bind_keys(meanings, num_codes, counts_KA=counts_KA, gt_actions=gt_actions))  # as eval scores it
        return cls(labels, keys)

    def describe(self) -> list[dict]:
        by_code: dict[int, list[str]] = {}
        for key, code in self.keys.items():
            by_code.setdefault(code, []).append("Space" if key == " " else key)
        return [{"code": k, "label": label, "keys": by_code.get(k, [])} for k, label in enumerate(self.labels)]


class Levels:
    """First frames (and actions) of a split's episodes: the starts of "new level"."""

    def __init__(self, data: Path, split: str, context: int, image_shape):
        self.index = EpisodeIndex(data, split, image_shape)
        starts = (self.index.offset == 0) & (self.index.lengths >= context)
        self.records = np.flatnonzero(starts)
        if not len(self.records):
            raise DataError(f"{data / split}: no episode has the {context} frames a level starts from")
        self.context = context

    def __len__(self) -> int:
        return len(self.records)

    def get(self, i: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        """(episode, its first C frames uint8 [C, H, W, Ch], actions [C] or None) of level ``i`` (mod count)."""
        r = int(self.records[i % len(self.records)])
        arrays = self.index.read(r, 0, self.context)
        return int(self.index.episode[r]), arrays["frames"], arrays.get("actions")


class Game:
    """One loaded world model, shared by every tab; ``world_*`` make a tab's own state."""

    def __init__(
        self,
        roll: Rollout,
        bindings: Bindings,
        frame_shape: tuple[int, int, int],
        *,
        levels: Levels | None = None,
        infer_actions=None,
        family: str = "maskgit",
        name: str = "",
        dtype: str = "float32",
    ):
        self.roll, self.bindings, self.levels, self.frame_shape = roll, bindings, levels, tuple(frame_shape)
        self.family, self.name = family, name
        self.dtype = dtype  # what the model computes in
        self.infer_actions = infer_actions  # frames [1, C, ...] -> LAM ids [1, C-1]; None for gt-actions runs
        self.num_codes = len(bindings.labels)

    @property
    def window(self) -> int:
        """The tokenizer's chunk: frames it encodes and decodes together."""
        return self.roll.tokenizer_window

    def info(self) -> dict:
        h, w, c = self.frame_shape
        return {
            "type": "hello",
            "run": self.name,
            "family": self.family,
            "frame_shape": [h, w, c],
            "codes": self.bindings.describe(),
            "keys": self.bindings.keys,
            "levels": len(self.levels) if self.levels else 0,
        }

    def warm_up(self) -> float:
        """Compile everything a session runs (encode, first frames, the sliding window, the decoder's chunk
        lengths); seconds taken."""
        t0 = time.perf_counter()
        world = World(self, np.zeros((1, 1, *self.frame_shape), np.uint8), np.zeros((1, 0), np.int32), 0, "warm-up")
        for t in range(max(self.roll.window, self.window) + 1):  # a slide, and every decoder chunk length
            world.step(t % self.num_codes)
        return time.perf_counter() - t0

    def world_from_level(self, i: int, seed: int) -> World:
        if self.levels is None:
            raise PlayError("no dataset was given (--data), so there are no levels: upload an image instead")
        episode, frames, actions = self.levels.get(i)
        ctx = frames[None]
        if frames.shape[0] > 1:
            ids = actions[None, :-1] if self.infer_actions is None else self.infer_actions(ctx)
        else:
            ids = np.zeros((1, 0), np.int32)
        return World(self, ctx, ids, seed, f"level {i % len(self.levels)} (episode {episode})")

    def world_from_image(self, data: bytes, seed: int) -> World:
        return World(
            self, decode_upload(data, self.frame_shape)[None, None], np.zeros((1, 0), np.int32), seed, "uploaded image"
        )


def load_game(
    run: Path,
    data: Path | None = None,
    split: str = "test",
    context: int = 1,
    *,
    temperature: float | None = None,
    steps: int | None = None,
    mapping_transitions: int = 2000,
    dtype: InferenceDtype = "run",
) -> Game:
    """The ``Game`` of a dynamics run: its sampler, levels from ``data``'s ``split`` and its key bindings.

    ``data`` defaults to the dataset the run was trained on, when it still exists. Sampling
    defaults to the run's validation sampling (what its rollout metrics were measured with). With a LAM and real
    actions, it prints how well the codes match them (``jasmine actions``' figures on ``mapping_transitions``
    transitions of ``split``) and binds keys by the train split's code × action counts.
    """
    cfg, genie = load_genie(run, dtype)
    data = data if data is not None else (Path(cfg.data) if Path(cfg.data, "metadata.json").exists() else None)
    if not 1 <= context < cfg.seq_len:
        raise ValueError(f"--context {context} must be between 1 and the model's seq_len - 1 ({cfg.seq_len - 1})")
    opts = SampleOptions(**dataclasses.asdict(cfg.val_sampling))
    if temperature is not None:  # ordinal decoding only applies at temperature 0
        opts = dataclasses.replace(opts, temperature=temperature, ordinal=opts.ordinal and temperature == 0)
    roll = Rollout(genie, cfg.seq_len, opts if steps is None else dataclasses.replace(opts, steps=steps))
    meta = read_metadata(data) if data is not None else {}
    meanings = action_meanings(meta)
    gt, counts = genie.lam is None, None
    levels = Levels(data, split, context, cfg.image_size) if data is not None else None
    if not gt and meta.get("num_actions", 0) > 0:
        try:  # the codes' meaning, with its chance levels; keys bind by the train split's counts, as eval scores
            m = measure(
                genie.lam,
                genie.lam_window,
                data,
                split=split,
                transitions=mapping_transitions,
                permutations=200,
                kmeans=0,
            )
        except DataError as e:
            warnings.warn(f"no action mapping (number keys only): {e}", stacklevel=2)
        else:
            counts = np.asarray(m.get("train_counts", m.get("counts")))
            if "raw" in m:
                print("\n".join(summary_lines(m)))
    bindings = Bindings.for_codes(num_action_codes(genie), meanings=meanings, counts_KA=counts, gt_actions=gt)
    infer = None if gt else (lambda frames: infer_actions(genie, frames))
    return Game(
        roll,
        bindings,
        genie.tokenizer.image_shape,
        levels=levels,
        infer_actions=infer,
        family=genie.dynamics.family,
        name=Path(run).name,  # clients get the run's name, never a path on this machine
        dtype=compute_dtype(cfg, dtype),
    )


def decode_upload(data: bytes, frame_shape) -> np.ndarray:
    """An uploaded PNG or JPEG as one uint8 frame [H, W, Ch] of the model's size; PlayError otherwise."""
    h, w, c = frame_shape
    try:
        img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
        if img.width * img.height > MAX_UPLOAD_PIXELS:
            raise PlayError(f"the image is {img.width}x{img.height}; at most {MAX_UPLOAD_PIXELS:,} pixels are accepted")
        img.load()
    except PlayError:
        raise
    except Exception as e:  # PIL raises many types for bad data; none of them may reach the server
        raise PlayError(f"the upload is not a readable PNG or JPEG image ({type(e).__name__})") from None
    frame = fit_frame(img, (h, w), "resize")
    return frame if c == 3 else np.asarray(Image.fromarray(frame).convert("L"))[..., None]


def png_data_url(frame_HWC: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame_HWC.squeeze(-1) if frame_HWC.shape[-1] == 1 else frame_HWC).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


HISTORY = 256  # frames a tab keeps for its GIF: bounded memory and a bounded encode, however long it plays


class World:
    """One tab's world: the context it started from, the frames so far and the stream that extends them."""

    def __init__(self, game: Game, ctx_1CHWC: np.ndarray, ctx_codes_1C1: np.ndarray, seed: int, origin: str):
        self.game, self.seed, self.origin = game, seed, origin
        self.ctx, self.ctx_codes = ctx_1CHWC, np.asarray(ctx_codes_1C1, np.int32)
        self.reset()

    def reset(self) -> None:
        roll = self.game.roll
        C = self.ctx.shape[1]
        ids = roll.encode(self.ctx)
        self.stream = roll.start(ids, self.ctx_codes, jax.random.key(self.seed))
        self.frames = collections.deque(self.ctx[0], maxlen=HISTORY)  # the last HISTORY frames (GIF download)
        self.t = C - 1  # index of the newest frame
        self.codes: list[int | None] = [None] * C
        self.latency_ms = self.dynamics_ms = 0.0  # the last step's, action to frame: in all, generating its tokens
        self.decoder_caches = None  # the tokenizer decoder's K/V of the newest frame's chunk

    def step(self, code: int) -> np.ndarray:
        """Generate the frame after action ``code``; returns it uint8 [H, W, Ch]."""
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < self.game.num_codes:
            raise PlayError(f"unknown action {code!r}: actions are integers 0..{self.game.num_codes - 1}")
        self.settle()  # normally done already, while the player looked at the last frame
        t0 = time.perf_counter()
        jax.block_until_ready(self.stream.step(np.array([code], np.int32), defer=True))
        self.dynamics_ms = (time.perf_counter() - t0) * 1e3
        t = self.t + 1  # the decoder is causal in time: frame t decodes from its chunk's frames up to t, cached
        x_BHWC, self.decoder_caches = self.game.roll.decode_frame(self.stream.frames, t, self.decoder_caches)
        frame = (np.clip(x_BHWC[0], 0, 1) * 255).round().astype(np.uint8)
        self.frames.append(frame)
        self.t = t
        self.codes = [*self.codes[-1:], code]
        self.latency_ms = (time.perf_counter() - t0) * 1e3
        return frame

    def settle(self) -> float:
        """Write the newest frame into the dynamics' caches (``Stream.settle``), which ``step`` leaves for after
        the frame is shown; returns the milliseconds it took (0 when nothing was left)."""
        if not self.stream.unsettled:
            return 0.0
        t0 = time.perf_counter()
        self.stream.settle()
        jax.block_until_ready(self.stream.caches)
        return (time.perf_counter() - t0) * 1e3

    def message(self) -> dict:
        code = self.codes[-1]
        return {
            "type": "frame",
            "image": png_data_url(self.frames[-1]),
            "t": self.t,
            "code": code,
            "label": "start: " + self.origin if code is None else self.game.bindings.labels[code],
            "latency_ms": round(self.latency_ms, 2),
        }

    def gif_frames(self) -> np.ndarray:
        """The last ``HISTORY`` frames (a copy: encode it outside the model lock with :func:`encode_gif`)."""
        return np.stack(self.frames)

    def gif(self, fps: int = 8) -> bytes:
        return encode_gif(self.gif_frames(), fps)


def encode_gif(frames_THWC: np.ndarray, fps: int = 8) -> bytes:
    buf = io.BytesIO()
    write_gif(buf, frames_THWC, fps=fps, scale=4)
    return buf.getvalue()
