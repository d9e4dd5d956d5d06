"""Autoregressive rollouts of a Genie model, with or without the frame-level KV cache.

Dimension key: B batch, C context frames, F generated frames, T = C + F, N tokens per
frame, A action width, W window (the model's training seq_len).

Attention is causal in time, so frames already generated never change. With the cache,
each block's temporal keys/values of past frames are kept, and every MaskGIT step of a
new frame runs the transformer on that one frame only. Without it, every step runs the
whole window. Both paths draw the same random numbers (``fold_in(rng, frame)``) and so
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

from jasmine.models.dynamics import prefill, step_logits
from jasmine.models.genie import Genie
from jasmine.sample.maskgit import generate_frame, unmask_frame


@dataclass(frozen=True)
class SampleOptions:
    steps: int = 25
    """MaskGIT steps per frame (steps that fix no token are skipped: at most one model pass per token)."""
    temperature: float = 1.0
    """Sampling temperature (0 = argmax)."""
    cache: bool = True
    """Use the frame-level KV cache."""


class Rollout:
    """Jitted frame generation for one Genie model; ``window`` is its training seq_len."""

    def __init__(self, genie: Genie, window: int, opts: SampleOptions = SampleOptions()):
        self.graphdef, self.state = nnx.split(genie)
        self.window, self.opts = window, opts
        gd = self.graphdef
        h, w, _ = genie.tokenizer.image_shape
        p = genie.tokenizer.cfg.patch_size
        N = (h // p) * (w // p)

        def cached_frame(state, caches, pos, a_BA, rng):
            dyn = nnx.merge(gd, state).dynamics
            frame_fn = lambda ids_BN, mask_BN: step_logits(dyn, ids_BN, mask_BN, a_BA, caches, pos)[0]
            ids_BN = unmask_frame(frame_fn, jnp.zeros((a_BA.shape[0], N), jnp.int32), rng, steps=opts.steps,
                                  temperature=opts.temperature)
            _, kvs = step_logits(dyn, ids_BN, jnp.zeros_like(ids_BN, bool), a_BA, caches, pos)
            return ids_BN, dyn.transformer.write_cache(caches, kvs, pos)

        def full_frame(state, ids_BWN, a_BWA, pos, rng):
            dyn = nnx.merge(gd, state).dynamics
            logits_fn = lambda ids, mask: dyn(ids, mask, a_BWA)
            return jnp.take(generate_frame(logits_fn, ids_BWN, pos, rng, steps=opts.steps,
                                           temperature=opts.temperature), pos, axis=1)

        self._prefill = jax.jit(lambda state, ids, a: prefill(nnx.merge(gd, state).dynamics, ids, a, window))
        self._cached_frame = jax.jit(cached_frame, donate_argnums=1)
        self._full_frame = jax.jit(full_frame)
        self._vectors = jax.jit(lambda state, ids: nnx.merge(gd, state).action_vectors(ids))
        self._decode = jax.jit(lambda state, ids: nnx.merge(gd, state).tokenizer.decode(ids))
        self._encode = jax.jit(lambda state, x: nnx.merge(gd, state).tokenizer.encode(x.astype(jnp.float32) / 255.0))

    def encode(self, frames_BTHWC: np.ndarray) -> jax.Array:
        """Tokens of uint8 frames, encoded in windows of at most ``window`` frames."""
        return jnp.concatenate([self._encode(self.state, frames_BTHWC[:, s : s + self.window])
                                for s in range(0, frames_BTHWC.shape[1], self.window)], axis=1)

    def decode(self, ids_BTN) -> np.ndarray:
        """Frames float32 [B, T, H, W, C] in [0, 1]."""
        return np.concatenate([np.asarray(self._decode(self.state, ids_BTN[:, s : s + self.window]))
                               for s in range(0, ids_BTN.shape[1], self.window)], axis=1)

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
