"""Autoregressive rollouts of a Genie model, with or without the frame-level KV cache.

Dimension key: B batch, C context frames, F generated frames, T = C + F, N tokens per
frame, A action width, W window (the model's training seq_len).

Attention is causal in time, so frames already generated never change. With the cache,
keys/values of what is already known are kept: for MaskGIT each block's temporal K/V of
past frames (every unmasking step runs the transformer on the new frame only), for the
causal family every slot's K/V (every token costs one slot's work). Without it, every
step runs the whole window. Both paths draw the same random numbers (``fold_in(rng, frame)``) and so
give the same tokens. Past ``W`` frames the window slides: it keeps the last ``W-1``
frames, re-prefills their cache, and the frame at window position 0 gets no action
(as in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.models.genie import Genie
from jasmine.models.digits import SamplingOptions


@dataclass(frozen=True)
class SampleOptions(SamplingOptions):
    cache: bool = True
    """Use the frame-level KV cache."""


class Rollout:
    """Jitted frame generation for one Genie model; ``window`` is its training seq_len."""

    def __init__(self, genie: Genie, window: int, opts: SampleOptions = SampleOptions()):
        dyn = genie.dynamics
        opts.check(dyn.digits, dyn.family, dyn.maskgit_options)
        self.graphdef, self.state = nnx.split(genie)
        self.window, self.opts = window, opts.resolved(dyn.maskgit_options)
        gd = self.graphdef

        self._prefill = jax.jit(lambda state, ids, a: nnx.merge(gd, state).prefill(ids, a, window))
        self._cached_frame = jax.jit(lambda state, caches, pos, a_BA, rng: nnx.merge(gd, state).next_frame(
            caches, pos, a_BA, rng, opts), donate_argnums=1)
        self._full_frame = jax.jit(lambda state, ids_BWN, a_BWA, pos, rng: nnx.merge(gd, state).dynamics.frame(
            ids_BWN, a_BWA, pos, rng, opts))
        self._vectors = jax.jit(lambda state, ids: nnx.merge(gd, state).action_vectors(ids))
        self._decode = jax.jit(lambda state, ids: nnx.merge(gd, state).decode(ids))
        self._encode = jax.jit(lambda state, x: nnx.merge(gd, state).encode(x))

    def encode(self, frames_BTHWC: np.ndarray) -> jax.Array:
        """Tokens of the uint8 frames of an aligned clip (the encoding rule of ``jasmine.models.genie``)."""
        return self._encode(self.state, jnp.asarray(frames_BTHWC))

    def decode(self, ids_BTN) -> np.ndarray:
        """Frames float32 [B, T, H, W, C] in [0, 1] of the tokens of an aligned clip."""
        return np.asarray(self._decode(self.state, ids_BTN))

    def run(self, ctx_ids_BCN, action_ids_BT1, rng, *, num_frames: int) -> jax.Array:
        """Generate ``num_frames`` frames after the context; ``action_ids_BT1[:, t-1]`` leads to frame t.

        Returns all token ids [B, C + F, N] (the context unchanged).
        """
        B, C, N = ctx_ids_BCN.shape
        T = C + num_frames
        if action_ids_BT1.shape != (B, T - 1):
            raise ValueError(f"need {T - 1} actions per sample for {C} context + {num_frames} frames, "
                             f"got {action_ids_BT1.shape[1]}")
        if C < 1 or C >= self.window:
            raise ValueError(f"--context {C} must be between 1 and the model's seq_len - 1 ({self.window - 1})")
        a_BTA = jnp.pad(self._vectors(self.state, jnp.asarray(action_ids_BT1)), ((0, 0), (1, 0), (0, 0)))
        frames = [ctx_ids_BCN[:, c] for c in range(C)]
        W, start = self.window, 0

        def window_actions(lo, hi):  # frame at window position 0 gets no action, as in training
            return a_BTA[:, lo:hi].at[:, 0].set(0.0)

        caches = self._prefill(self.state, ctx_ids_BCN, window_actions(0, C)) if self.opts.cache else None
        for t in range(C, T):
            key = jax.random.fold_in(rng, t)
            if t - start == W:  # slide: keep the last W-1 frames
                start += 1
                if self.opts.cache:
                    caches = self._prefill(self.state, jnp.stack(frames[start:t], 1), window_actions(start, t))
            pos = t - start
            if self.opts.cache:
                ids_BN, caches = self._cached_frame(self.state, caches, pos, a_BTA[:, t], key)
            else:
                win_BWN = jnp.stack(frames[start:t] + [jnp.zeros_like(frames[0])] * (W - pos), 1)
                a_BWA = jnp.pad(window_actions(start, t + 1), ((0, 0), (0, W - pos - 1), (0, 0)))
                ids_BN = self._full_frame(self.state, win_BWN, a_BWA, pos, key)
            frames.append(ids_BN)
        return jnp.stack(frames, 1)
