"""What sampling and evaluation share: loading a Genie run, reading clips, choosing actions.

Dimension key: B clips, T frames (context + generated), H/W/C frame shape.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.config import DynamicsTrainConfig
from jasmine.data.loader import episode_clips
from jasmine.models.genie import Genie
from jasmine.train.components import COMPONENTS, load_run
from jasmine.train.components.base import precision
from jasmine.train.runs import run_config

ACTION_SOURCES = ("lam", "gt", "random", "fixed:K", "list:A,B,...")

InferenceDtype = Literal["run", "float32", "bfloat16"]
"""What a loaded model computes in: its run's ``--dtype`` (auto: bf16 on GPU, float32 on CPU), or one given."""


def load_genie(run_dir: str | Path, dtype: InferenceDtype = "run") -> tuple[DynamicsTrainConfig, Genie]:
    """The Genie model of a dynamics run (tokenizer, action source and dynamics from its checkpoint), computing in
    ``dtype`` (see :func:`with_dtype`)."""
    cfg = run_config(run_dir)
    if not isinstance(cfg, DynamicsTrainConfig):
        raise ValueError(f"--run {run_dir} is a {type(cfg).__name__} run; sampling needs a dynamics run")
    try:
        _, genie, _ = load_run(run_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--run {run_dir} has no dynamics checkpoint yet (train it first): {e}") from e
    return cfg, with_dtype(cfg, genie, dtype)


def compute_dtype(cfg: DynamicsTrainConfig, dtype: InferenceDtype) -> str:
    """The dtype a model loaded with ``dtype`` computes in on this backend (``run``: its run's, resolved)."""
    return str(precision(cfg).dtype) if dtype == "run" else dtype


def with_dtype(cfg: DynamicsTrainConfig, genie: Genie, dtype: InferenceDtype) -> Genie:
    """``genie`` computing in ``dtype`` (``run``: unchanged): with bfloat16, its weights are stored in bf16 (half the
    bytes each sampling pass streams) and its matmuls take bf16 inputs, as a run trained with ``--dtype bfloat16``
    computes; norms, softmaxes and output heads stay in float32. On XLA:CPU the products accumulate in float32
    (``jasmine.models.linear.half_dot_accumulator``) and sampling stores the kernels [out, in]
    (``serving_layout``): a ``coinrun``-preset play frame takes 0.73x float32's (docs/benchmarks.md). Sampling
    is then no longer bitwise the run's own: ``jasmine eval --dtype`` measures what it changes."""
    if dtype == "run":
        return genie
    recast = dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)  # inference only: no update to round away
    build = COMPONENTS["dynamics"].build
    graphdef, target = nnx.split(nnx.eval_shape(lambda: build(recast, nnx.Rngs(0), pretrained=False)))
    state = jax.tree.map(lambda t, x: x if t.dtype == x.dtype else x.astype(t.dtype), target, nnx.state(genie))
    return nnx.merge(graphdef, state)


def read_clips(
    genie: Genie, data: Path, split: str, n: int, length: int, seed: int, image_shape=None
) -> dict[str, np.ndarray]:
    """``n`` clips of ``length`` frames (and actions) from ``n`` distinct episodes of ``split``.

    Clips start where the model's encoding rule lets them (``genie.align``); deterministic in ``seed``.
    """
    return episode_clips(data, split, n, length, seed, align=genie.align, image_shape=image_shape)


def num_action_codes(genie: Genie) -> int:
    return genie.lam.cfg.vocab_size if genie.lam is not None else genie.action_embed.num_embeddings


def infer_actions(genie: Genie, frames_BTHWC: np.ndarray) -> np.ndarray:
    """LAM action ids [B, T-1] of an aligned clip (the LAM's windows, see ``jasmine.models.genie``)."""
    graphdef, state = nnx.split(genie)
    return np.asarray(_infer(graphdef, state, jnp.asarray(frames_BTHWC)))


@partial(jax.jit, static_argnums=0)
def _infer(graphdef, state, frames):
    return nnx.merge(graphdef, state).infer_actions(frames)


def choose_actions(spec: str, genie: Genie, clips: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Action ids [B, T-1] (entry t-1 leads to frame t) from a source spec; see ``ACTION_SOURCES``."""
    B, T = clips["frames"].shape[:2]
    codes = num_action_codes(genie)
    kind, _, arg = spec.partition(":")
    if kind == "lam":
        if genie.lam is None:
            raise ValueError("--actions lam: this model was trained with --gt-actions; use --actions gt")
        ids = infer_actions(genie, clips["frames"])
    elif kind == "gt":
        if "actions" not in clips:
            raise ValueError("--actions gt: the dataset has no actions")
        if genie.lam is not None:
            raise ValueError(
                "--actions gt: this model uses latent actions; use --actions lam, random, fixed:K or list:..."
            )
        ids = clips["actions"][:, :-1]
    elif kind == "random":
        ids = rng.integers(0, codes, (B, T - 1))
    elif kind == "fixed":
        ids = np.full((B, T - 1), _int(arg, spec))
    elif kind == "list":
        seq = [_int(a, spec) for a in arg.split(",") if a.strip()]
        if len(seq) != T - 1:
            raise ValueError(
                f"--actions {spec}: expected {T - 1} action ids (one per frame after the first), got {len(seq)}"
            )
        ids = np.tile(np.asarray(seq), (B, 1))
    else:
        raise ValueError(f"--actions {spec!r}: use one of {', '.join(ACTION_SOURCES)}")
    ids = np.asarray(ids, np.int32)
    bad = ids[(ids < 0) | (ids >= codes)]
    if bad.size:
        raise ValueError(
            f"--actions {spec}: action id {int(bad[0])} is outside the codebook of {codes} actions "
            f"(valid ids 0..{codes - 1})"
        )
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
