"""What sampling and evaluation share: loading a Genie run, reading clips, choosing actions.

Dimension key: B clips, T frames (context + generated), H/W/C frame shape.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jasmine.config import DynamicsTrainConfig
from jasmine.data.loader import make_loader
from jasmine.models.genie import Genie

ACTION_SOURCES = ("lam", "gt", "random", "fixed:K", "list:A,B,...")


def load_genie(run_dir: str | Path) -> tuple[DynamicsTrainConfig, Genie]:
    """The Genie model of a dynamics run (tokenizer, action source and dynamics from its checkpoint)."""
    from jasmine.train.loop import load_run, run_config

    cfg = run_config(run_dir)
    if not isinstance(cfg, DynamicsTrainConfig):
        raise ValueError(f"--run {run_dir} is a {type(cfg).__name__} run; sampling needs a dynamics run")
    try:
        _, genie, _ = load_run(run_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--run {run_dir} has no dynamics checkpoint yet (train it first): {e}") from e
    return cfg, genie


def read_clips(data: Path, split: str, n: int, length: int, seed: int, image_shape=None) -> dict[str, np.ndarray]:
    """``n`` clips of ``length`` frames (and actions) from ``split``, deterministic in ``seed``."""
    it = iter(make_loader(data, split, seq_len=length, batch_size=n, seed=seed, image_shape=image_shape,
                          process_index=0, process_count=1))
    return next(it)


def num_action_codes(genie: Genie) -> int:
    return genie.lam.cfg.num_latents if genie.lam is not None else genie.action_embed.num_embeddings


def infer_actions(genie: Genie, frames_BTHWC: np.ndarray, window: int) -> np.ndarray:
    """LAM action ids [B, T-1] from frames, on windows overlapping by one frame."""
    infer = jax.jit(lambda x: genie.lam.infer_actions(x.astype(jnp.float32) / 255.0))
    B, T = frames_BTHWC.shape[:2]
    out = np.zeros((B, T - 1), np.int32)
    for s in range(0, T - 1, window - 1):
        chunk = frames_BTHWC[:, s : s + window]
        out[:, s : s + chunk.shape[1] - 1] = np.asarray(infer(chunk))
    return out


def choose_actions(spec: str, genie: Genie, clips: dict[str, np.ndarray], rng: np.random.Generator,
                   window: int) -> np.ndarray:
    """Action ids [B, T-1] (entry t-1 leads to frame t) from a source spec; see ``ACTION_SOURCES``."""
    B, T = clips["frames"].shape[:2]
    codes = num_action_codes(genie)
    kind, _, arg = spec.partition(":")
    if kind == "lam":
        if genie.lam is None:
            raise ValueError("--actions lam: this model was trained with --gt-actions; use --actions gt")
        ids = infer_actions(genie, clips["frames"], window)
    elif kind == "gt":
        if "actions" not in clips:
            raise ValueError("--actions gt: the dataset has no actions")
        if genie.lam is not None:
            raise ValueError("--actions gt: this model uses latent actions; use --actions lam, random, fixed:K or list:...")
        ids = clips["actions"][:, :-1]
    elif kind == "random":
        ids = rng.integers(0, codes, (B, T - 1))
    elif kind == "fixed":
        ids = np.full((B, T - 1), _int(arg, spec))
    elif kind == "list":
        seq = [_int(a, spec) for a in arg.split(",") if a.strip()]
        if len(seq) != T - 1:
            raise ValueError(f"--actions {spec}: expected {T - 1} action ids (one per frame after the first), got {len(seq)}")
        ids = np.tile(np.asarray(seq), (B, 1))
    else:
        raise ValueError(f"--actions {spec!r}: use one of {', '.join(ACTION_SOURCES)}")
    ids = np.asarray(ids, np.int32)
    bad = ids[(ids < 0) | (ids >= codes)]
    if bad.size:
        raise ValueError(f"--actions {spec}: action id {int(bad[0])} is outside the codebook of {codes} actions "
                         f"(valid ids 0..{codes - 1})")
    return ids


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--actions {spec}: {text!r} is not an integer action id") from None


def check_lengths(context: int, frames: int, window: int) -> None:
    if context >= frames:
        raise ValueError(f"--context {context} must be shorter than the rollout (--frames {frames} counts all frames)")
    if context < 1 or context >= window:
        raise ValueError(f"--context {context} must be between 1 and the model's seq_len - 1 ({window - 1})")
