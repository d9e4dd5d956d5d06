"""Autoregressive rollouts of a Genie model, with or without the frame-level KV cache.

Dimension key: B batch, C context frames, F generated frames, T = C + F, N tokens per
frame, A action width, W window (the model's training seq_len).

Attention is causal in time, so frames already generated never change. With the cache,
keys/values of what is already known are kept: for MaskGIT each block's temporal K/V of
past frames (every unmasking step runs the transformer on the new frame only), for the
causal family every slot's K/V (every token costs one slot's work). Without it, every
step runs the whole window. Both paths draw the same random numbers (``fold_in(rng, frame)``) and so
give the same tokens. Past ``W`` frames the window slides. With absolute time positions
(the default) it keeps the last ``W-1`` frames, re-prefills their cache, and the frame at
window position 0 gets no action (as in training). With rotary ones (``--model.time-positions
rope``) nothing is re-run: the cache is a ring of the last ``W`` frames, every frame attends
to at most ``W`` frames (itself included), and each generated frame costs what a frame inside
the first window costs. The uncached path then runs the ``receptive_frames`` window that
reaches back as far as the cached one does, with the same band.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.models.digits import SamplingOptions
from jasmine.models.genie import Genie, context_rng
from jasmine.models.linear import serving_layout


@dataclass(frozen=True)
class SampleOptions(SamplingOptions):
    cache: bool = True
    """Use the frame-level KV cache (--no-cache for the full-window path)."""


def sample_options(flags: SamplingOptions, **override) -> SampleOptions:
    """The sampling options held by a command's flags (which subclass ``SamplingOptions``), with ``override``."""
    names = [f.name for f in fields(SampleOptions) if hasattr(flags, f.name)]
    return SampleOptions(**({n: getattr(flags, n) for n in names} | override))


class Rollout:
    """Jitted frame generation for one Genie model; ``window`` is its training seq_len."""

    def __init__(self, genie: Genie, window: int, opts: SampleOptions = SampleOptions()):
        dyn = genie.dynamics
        type(dyn).check_sampling(opts, genie.tokenizer.cfg)
        self.graphdef, self.state = nnx.split(serving_layout(genie))  # a copy where CPU bf16 kernels flip
        self.window, self.opts = window, type(dyn).resolve_sampling(opts)
        self.rope = dyn.cfg.time_positions == "rope"
        self.receptive = dyn.receptive_frames(window) if self.rope else window
        gd = self.graphdef

        self._prefill = jax.jit(
            lambda state, ids, a, ctx_rng: nnx.merge(gd, state).prefill(ids, a, window, self.opts, ctx_rng)
        )
        self._draw = jax.jit(
            lambda state, caches, pos, a_BA, rng: nnx.merge(gd, state).draw_frame(caches, pos, a_BA, rng, opts),
            donate_argnums=1,
        )
        self._commit = jax.jit(
            lambda state, caches, ids, pos, a_BA: nnx.merge(gd, state).commit_frame(caches, ids, pos, a_BA, opts),
            donate_argnums=1,
        )
        self._full_frame = jax.jit(
            lambda state, ids_BWN, a_BWA, pos, rng, ctx_rng: nnx.merge(gd, state).dynamics.frame(
                ids_BWN, a_BWA, pos, rng, opts, ctx_rng
            )
        )
        self._banded_frame = jax.jit(  # rope: the receptive window from time t0, attention banded to ``window``
            lambda state, ids_BRN, a_BRA, pos, rng, ctx_rng, t0: nnx.merge(gd, state).dynamics.frame(
                ids_BRN, a_BRA, pos, rng, opts, ctx_rng, t0, window
            )
        )
        self._vectors = jax.jit(lambda state, ids: nnx.merge(gd, state).action_vectors(ids))
        self._decode = jax.jit(lambda state, ids: nnx.merge(gd, state).decode(ids))
        self.tokenizer_window = genie.tokenizer_window
        self._decode_start = jax.jit(lambda state, ids: nnx.merge(gd, state).decode_start(ids))
        self._decode_next = jax.jit(
            lambda state, ids, caches, t: nnx.merge(gd, state).decode_next(ids, caches, t), donate_argnums=2
        )
        self._encode = jax.jit(lambda state, x: nnx.merge(gd, state).encode(x))

    def encode(self, frames_BTHWC: np.ndarray) -> jax.Array:
        """Tokens of the uint8 frames of an aligned clip (the encoding rule of ``jasmine.models.genie``)."""
        return self._encode(self.state, jnp.asarray(frames_BTHWC))

    def decode(self, ids_BTN) -> np.ndarray:
        """Frames float32 [B, T, H, W, C] in [0, 1] of the tokens of an aligned clip."""
        return np.asarray(self._decode(self.state, ids_BTN))

    def decode_frame(self, frames: list, t: int, caches=None) -> tuple[np.ndarray, list]:
        """Frame ``t`` of a stream's token ``frames`` (one [B, N] per frame), float32 [B, H, W, C] in [0, 1], as
        :meth:`decode` of its tokenizer chunk gives it, and the decoder caches to pass for frame t + 1. With the
        caches of frame t - 1 in the same chunk it costs one frame; without (None), the chunk's frames up to t."""
        p = t % self.tokenizer_window
        if p == 0 or caches is None:
            x_BTHWC, caches = self._decode_start(self.state, jnp.stack(frames[t - p : t + 1], 1))
        else:
            x_BTHWC, caches = self._decode_next(self.state, frames[t][:, None], caches, p)
        return np.asarray(x_BTHWC[:, -1]), caches

    def run(self, ctx_ids_BCN, action_ids_BT1, rng, *, num_frames: int) -> jax.Array:
        """Generate ``num_frames`` frames after the context; ``action_ids_BT1[:, t-1]`` leads to frame t.

        Returns all token ids [B, C + F, N] (the context unchanged).
        """
        B, C = ctx_ids_BCN.shape[:2]
        T = C + num_frames
        if action_ids_BT1.shape != (B, T - 1):
            raise ValueError(
                f"need {T - 1} actions per sample for {C} context + {num_frames} frames, got {action_ids_BT1.shape[1]}"
            )
        stream = self.start(ctx_ids_BCN, action_ids_BT1[:, : C - 1], rng)
        for t in range(C, T):
            stream.step(action_ids_BT1[:, t - 1])
        return jnp.stack(stream.frames, 1)

    def start(self, ctx_ids_BCN, ctx_action_ids_BC1, rng) -> Stream:
        """A rollout to advance one frame at a time (``run`` loops over it; ``jasmine play`` holds one per tab)."""
        return Stream(self, ctx_ids_BCN, ctx_action_ids_BC1, rng)


class Stream:
    """The state of one rollout: its frames' tokens and action latents, the window start and the caches.

    ``step`` draws frame t with ``fold_in(rng, t)``, so a stream gives exactly the frames ``Rollout.run``
    gives for the same actions, however it is driven.
    """

    def __init__(self, roll: Rollout, ctx_ids_BCN, ctx_action_ids_BC1, rng):
        B, C = ctx_ids_BCN.shape[:2]
        if C < 1 or C >= roll.window:
            raise ValueError(f"--context {C} must be between 1 and the model's seq_len - 1 ({roll.window - 1})")
        if np.shape(ctx_action_ids_BC1) != (B, C - 1):
            raise ValueError(f"need {C - 1} actions between the {C} context frames, got {np.shape(ctx_action_ids_BC1)}")
        self.roll, self.rng, self.context_rng, self.start = roll, rng, context_rng(rng), 0
        self.frames = [ctx_ids_BCN[:, c] for c in range(C)]
        a_BCA = roll._vectors(roll.state, jnp.asarray(ctx_action_ids_BC1, jnp.int32).reshape(B, C - 1))
        zero_BA = jnp.zeros((B, a_BCA.shape[-1]), a_BCA.dtype)
        self.actions = [zero_BA] + [a_BCA[:, c] for c in range(C - 1)]  # frame t's action latent
        self.caches, self._unsettled = None, False  # whether the newest frame is drawn but not yet cached
        if roll.opts.cache:
            self.caches = roll._prefill(roll.state, ctx_ids_BCN, self._window_actions(0, C), self.context_rng)

    def _window_actions(self, lo: int, hi: int) -> jax.Array:
        """Action latents [B, hi - lo, A] of frames lo..hi-1; window position 0 gets none, as in training."""
        return jnp.stack([jnp.zeros_like(self.actions[0])] + self.actions[lo + 1 : hi], 1)

    def step(self, action_ids_B, *, defer: bool = False) -> jax.Array:
        """Generate the next frame after the given action ids [B]; returns its token ids [B, N].

        ``defer``: leave writing the frame into the caches (one more pass, or a slide's re-prefill) to
        :meth:`settle`, which the next ``step`` runs first if nobody has: ``jasmine play`` shows the frame, then
        settles while the player decides. The frames are the same either way."""
        self.settle()
        roll, t = self.roll, len(self.frames)
        B = self.frames[0].shape[0]
        self.actions.append(roll._vectors(roll.state, jnp.asarray(action_ids_B, jnp.int32).reshape(B, 1))[:, 0])
        key = jax.random.fold_in(self.rng, t)
        ids_BN = self._rope_step(t, key) if roll.rope else self._absolute_step(t, key)
        self.frames.append(ids_BN)
        if not defer:
            self.settle()
        return ids_BN

    @property
    def unsettled(self) -> bool:
        """Whether the newest frame still has to be written into the caches (see :meth:`settle`)."""
        return self._unsettled

    def settle(self) -> None:
        """Write the newest frame into the caches, if a deferred ``step`` left it (else nothing). With absolute
        positions, when the next frame slides the window, re-prefill the next window instead (it holds this
        frame)."""
        if not self._unsettled:
            return
        roll, t = self.roll, len(self.frames) - 1
        if not roll.rope and t + 1 - self.start == roll.window:
            self._slide(t + 1)
        else:  # at the window position it was drawn at (the window slides only here)
            pos = t if roll.rope else t - self.start
            self.caches = roll._commit(roll.state, self.caches, self.frames[t], pos, self.actions[t])
        self._unsettled = False

    def _slide(self, t: int) -> None:
        """Absolute positions, frame ``t`` next: keep the last W-1 frames, re-prefilled."""
        start = self.start + 1
        if self.roll.opts.cache:
            self.caches = self.roll._prefill(
                self.roll.state, jnp.stack(self.frames[start:t], 1), self._window_actions(start, t), self.context_rng
            )
        self.start = start

    def _absolute_step(self, t: int, key) -> jax.Array:
        roll, W = self.roll, self.roll.window
        if t - self.start == W:  # slide (uncached; the cached path slid when it settled frame t - 1)
            self._slide(t)
        pos = t - self.start
        if roll.opts.cache:
            ids_BN, self.caches = roll._draw(roll.state, self.caches, pos, self.actions[t], key)
            self._unsettled = True
            return ids_BN
        win_BWN = jnp.stack(self.frames[self.start : t] + [jnp.zeros_like(self.frames[0])] * (W - pos), 1)
        a_BWA = jnp.pad(self._window_actions(self.start, t + 1), ((0, 0), (0, W - pos - 1), (0, 0)))
        return roll._full_frame(roll.state, win_BWN, a_BWA, pos, key, self.context_rng)

    def _rope_step(self, t: int, key) -> jax.Array:
        """Frame t at time t: through the ring cache, or uncached over the last ``receptive`` frames (every one
        with its own action: only frame 0 of the rollout has none)."""
        roll, R = self.roll, self.roll.receptive
        if roll.opts.cache:
            ids_BN, self.caches = roll._draw(roll.state, self.caches, t, self.actions[t], key)
            self._unsettled = True
            return ids_BN
        lo = max(0, t + 1 - R)
        pad = R - (t + 1 - lo)
        win_BRN = jnp.stack(self.frames[lo:t] + [jnp.zeros_like(self.frames[0])] * (pad + 1), 1)
        a_BRA = jnp.stack(self.actions[lo : t + 1] + [jnp.zeros_like(self.actions[0])] * pad, 1)
        return roll._banded_frame(roll.state, win_BRN, a_BRA, t - lo, key, self.context_rng, lo)
