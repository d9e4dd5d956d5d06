"""Genie: a frozen tokenizer, an action source and a dynamics model (MaskGIT, causal or diffusion),
and the encoding rule.

Dimension key:
    B batch   T frames   H/W/C frame height/width/channels   N tokens per frame
    A action-latent width   K encoder windows per clip   V vocabulary   L MAE latent width

"Tokens" are what the tokenizer gives a frame: VQ/FSQ ids [.., N] for the token families, or
MAE latents [.., N, L] for the diffusion family (each family declares which: ``continuous``).

The action source is either a latent action model (frozen from its own run, or co-trained
with the dynamics, keeping its decoder and losses) or an embedding of ground-truth actions.
Data convention: ``actions[t]`` is taken after ``frames[t]``, so the action between frames
t-1 and t is ``actions[t-1]``; LAM ids ``latent_actions[t]`` (t >= 1) already are.

**Encoding rule** (training on frames, ``data tokenize``, sample, eval and play all use it).
The tokenizer and the LAM are causal in time with absolute time positions, so they only
ever run on windows of the length they were trained on, placed on a fixed grid:

- tokenizer (window S): consecutive chunks of S frames from the episode's first frame; a
  frame's tokens depend on the frames from its chunk's start up to itself;
- LAM (window L): windows of L frames starting at episode frames 0, L-1, 2(L-1), ...
  (neighbours share one frame); the action into frame t comes from the window in which t is
  not the first frame.

Any prefix of a window encodes the same (causality), so a clip that starts at an episode
frame divisible by ``align`` = lcm(S, L-1) is encoded window by window from its own start
and every frame gets exactly the tokens and action it gets anywhere else.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.causal import CausalDynamics
from jasmine.models.diffusion import DiffusionDynamics
from jasmine.models.digits import SamplingOptions, token_digits
from jasmine.models.dynamics import DynamicsConfig, MaskGITDynamics, frame_actions
from jasmine.models.lam import LAMConfig, LatentActionModel
from jasmine.models.linear import Precision
from jasmine.models.mae import MAEConfig, MAETokenizer
from jasmine.models.nn import Attention, Remat
from jasmine.models.tokenizer import Tokenizer, TokenizerConfig

ActionSource = Literal["lam", "gt"]
DYNAMICS = {cls.family: cls for cls in (MaskGITDynamics, CausalDynamics, DiffusionDynamics)}
"""Dynamics families by name: each has the interface documented on ``MaskGITDynamics``."""
__all__ = ["DYNAMICS", "Genie", "context_rng", "token_digits"]


def context_rng(rng):
    """A rollout's context key (diffusion noises past frames with it), apart from its frame keys
    ``fold_in(rng, t)``."""
    return jax.random.fold_in(rng, 2**31 - 1)


def check_tokenizer(family: str, tok_cfg) -> None:
    """A token family needs a VQ/FSQ tokenizer, the diffusion family an MAE tokenizer."""
    if family not in DYNAMICS:
        raise ValueError(f"--dynamics {family!r} is not a dynamics family; choose from {sorted(DYNAMICS)}")
    if DYNAMICS[family].continuous != isinstance(tok_cfg, MAEConfig):
        need, cmd = ("an MAE", "train mae") if DYNAMICS[family].continuous else ("a VQ/FSQ", "train tokenizer")
        have = "an MAE" if isinstance(tok_cfg, MAEConfig) else "a VQ/FSQ"
        raise ValueError(f"--dynamics {family} needs {need} tokenizer run (`jasmine {cmd}`), got {have} tokenizer")


def frame_alignment(tokenizer_window: int, lam_window: int | None) -> int:
    """Episode-frame multiple at which clips must start for the encoding rule (see module doc)."""
    return math.lcm(tokenizer_window, lam_window - 1) if lam_window else tokenizer_window


def in_chunks(fn, x_BT, window: int):
    """``fn`` on consecutive chunks of ``window`` frames of x_BT...; a last, shorter chunk runs as it is.

    ``fn`` is causal in time, so padding that chunk to ``window`` frames would change nothing but its cost (the
    ``coinrun`` dynamics' 17 frames would encode 32)."""
    B, T = x_BT.shape[:2]
    K, R = divmod(T, window)
    parts = []
    if K:
        y = fn(x_BT[:, : K * window].reshape(B * K, window, *x_BT.shape[2:]))
        parts.append(y.reshape(B, K * window, *y.shape[2:]))
    if R:
        parts.append(fn(x_BT[:, K * window :]))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def lam_windows(x_BT, window: int):
    """Windows [B*K, L, ...] starting every L-1 frames (zero-padded past the clip's end)."""
    B, T = x_BT.shape[:2]
    K = max(-(-(T - 1) // (window - 1)), 1)
    x = jnp.pad(x_BT, [(0, 0), (0, (K - 1) * (window - 1) + window - T)] + [(0, 0)] * (x_BT.ndim - 2))
    idx_KL = jnp.arange(K)[:, None] * (window - 1) + jnp.arange(window)[None]
    return x[:, idx_KL].reshape(B * K, window, *x.shape[2:])


def from_lam_windows(y_KL1, B: int, T: int):
    """Per-window outputs for their L-1 transitions [B*K, L-1, ...] → per transition [B, T-1, ...]."""
    return y_KL1.reshape(B, -1, *y_KL1.shape[2:])[:, : T - 1]


class Genie(nnx.Module):
    def __init__(
        self,
        tok_cfg: TokenizerConfig,
        dyn_cfg: DynamicsConfig,
        image_shape: tuple[int, int, int],
        *,
        action_source: ActionSource = "lam",
        lam_cfg: LAMConfig = LAMConfig(),
        num_actions: int = 0,
        tokenizer_window: int = 1,
        lam_window: int = 2,
        family: str = "maskgit",
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        rngs: nnx.Rngs,
    ):
        if tokenizer_window < 1 or lam_window < 2:
            raise ValueError(
                f"encoder windows must be >= 1 (tokenizer) and >= 2 (LAM), got {tokenizer_window}, {lam_window}"
            )
        kw = dict(prec=prec, attention=attention, remat=remat, rngs=rngs)
        self.action_source = action_source
        self.tokenizer_window, self.lam_window = tokenizer_window, lam_window
        check_tokenizer(family, tok_cfg)
        self.tokenizer = (MAETokenizer if isinstance(tok_cfg, MAEConfig) else Tokenizer)(tok_cfg, image_shape, **kw)
        if action_source == "lam":
            self.lam = LatentActionModel(lam_cfg, image_shape, **kw)
            self.action_embed = None
        else:
            if num_actions <= 0:
                raise ValueError("ground-truth actions need a dataset with actions (num_actions > 0)")
            self.lam = None
            self.action_embed = nnx.Embed(num_actions, lam_cfg.code_dim, param_dtype=prec.param_dtype, rngs=rngs)
        DYNAMICS[family].check_config(dyn_cfg)
        reads = tok_cfg.latent_dim if DYNAMICS[family].continuous else token_digits(tok_cfg)
        self.dynamics = DYNAMICS[family](dyn_cfg, reads, lam_cfg.code_dim, phase=self.align, **kw)

    @property
    def align(self) -> int:
        """Frame clips read from frames must start at an episode frame divisible by this."""
        return frame_alignment(self.tokenizer_window, self.lam_window if self.lam is not None else None)

    @property
    def tokens_per_frame(self) -> int:
        h, w, _ = self.tokenizer.image_shape
        p = self.tokenizer.cfg.patch_size
        return (h // p) * (w // p)

    # ------------------------------------------------------------------ the encoding rule

    def encode(self, frames_BTHWC):
        """Tokens of uint8 (or [0, 1]) frames of an aligned clip: ids int32 [B, T, N] or latents [B, T, N, L]."""
        x = frames_BTHWC.astype(jnp.float32) / (255.0 if frames_BTHWC.dtype == jnp.uint8 else 1.0)
        return jax.lax.stop_gradient(in_chunks(self.tokenizer.encode, x, self.tokenizer_window))

    def decode(self, ids_BTN):
        """Frames float32 [B, T, H, W, C] in [0, 1] of the tokens (ids or latents) of an aligned clip."""
        return in_chunks(self.tokenizer.decode, ids_BTN, self.tokenizer_window)

    def decode_start(self, ids_BTN):
        """Frames of the first T frames of a tokenizer chunk and the decoder's K/V caches holding them, for
        :meth:`decode_next`: a chunk decoded one frame at a time, each at one frame's cost, as ``decode`` gives it."""
        return self.tokenizer.decode_start(ids_BTN, self.tokenizer_window)

    def decode_next(self, ids_B1N, caches, t):
        """Frame ``t`` (0 < t < tokenizer_window) of the chunk from the caches of its frames before it; the caches
        with it written in."""
        return self.tokenizer.decode_next(ids_B1N, caches, t)

    def infer_actions(self, frames_BTHWC):
        """LAM action ids int32 [B, T-1] of an aligned clip; entry t-1 leads to frame t."""
        x = frames_BTHWC.astype(jnp.float32) / 255.0
        ids = self.lam.infer_actions(lam_windows(x, self.lam_window))
        return from_lam_windows(ids, x.shape[0], x.shape[1])

    # ------------------------------------------------------------------ training inputs

    def tokens(self, batch) -> jax.Array:
        """Token ids int32 [B, T, N] of the batch (pre-tokenized, or encoded now; no gradient)."""
        return batch["tokens"] if "tokens" in batch else self.encode(batch["frames"])

    def action_ids(self, batch) -> jax.Array:
        """Discrete action between frames t-1 and t at index t-1: int32 [B, T-1]."""
        if self.action_source == "gt":
            return batch["actions"][:, :-1]
        if "latent_actions" in batch:
            return batch["latent_actions"][:, 1:]
        return self.infer_actions(batch["frames"])

    def action_vectors(self, ids_BT1) -> jax.Array:
        """Action latents [B, T-1, A] for action ids."""
        return self.action_embed(ids_BT1) if self.action_source == "gt" else self.lam.action_latents(ids_BT1)

    def frame_conditioning(self, batch, *, lam_rng=None, co_train: bool = False, detach: bool = False):
        """Per-frame action inputs [B, T, A] (zeros at t=0), and the LAM's outputs when co-training.

        Co-training runs the LAM on its windows (which must tile the clip's transitions);
        ``detach`` keeps dynamics gradients out of the LAM, which then learns from its own loss only.
        """
        if co_train:
            frames = batch["frames"].astype(jnp.float32) / 255.0
            B, T = frames.shape[:2]
            pred, ids, z, aux = self.lam(lam_windows(frames, self.lam_window), rng=lam_rng)
            z_BT1A = from_lam_windows(z, B, T)
            out = {
                "pred": from_lam_windows(pred, B, T),
                "target": frames[:, 1:],
                "ids": from_lam_windows(ids, B, T),
                **aux,
            }
            return frame_actions(jax.lax.stop_gradient(z_BT1A) if detach else z_BT1A), out
        z_BT1A = self.action_vectors(self.action_ids(batch))
        return frame_actions(jax.lax.stop_gradient(z_BT1A) if self.lam is not None else z_BT1A), None

    # ------------------------------------------------------------------ generation

    def prefill(self, ids_BCN, actions_BCA, window: int, opts: SamplingOptions = SamplingOptions(), context_rng=None):
        """K/V caches (``window`` frames) of the known frames; ``actions_BCA[:, 0]`` should be zeros.
        ``context_rng``: the rollout's :func:`context_rng`."""
        return self.dynamics.prefill(ids_BCN, actions_BCA, window, opts, context_rng)

    def next_frame(self, caches, pos, action_BA, rng, opts: SamplingOptions):
        """Generate the frame at window position ``pos`` from the caches; returns (ids_BN, updated caches)."""
        return self.dynamics.next_frame(caches, pos, action_BA, rng, opts, self.tokens_per_frame)

    def draw_frame(self, caches, pos, action_BA, rng, opts: SamplingOptions):
        """``next_frame`` without writing the frame into the caches: (ids_BN, caches); see ``commit_frame``."""
        return self.dynamics.draw_frame(caches, pos, action_BA, rng, opts, self.tokens_per_frame)

    def commit_frame(self, caches, ids_BN, pos, action_BA, opts: SamplingOptions):
        """The caches with a drawn frame written in (what ``next_frame`` does after drawing it)."""
        return self.dynamics.commit_frame(caches, ids_BN, pos, action_BA, opts)

    def generate(self, ctx_BCN, a_BTA, rng, opts: SamplingOptions):
        """Tokens [B, T, N] of C context frames followed by T - C generated ones (T within one window).

        ``a_BTA[:, t]`` conditions frame t (zeros at t = 0). Frame t uses ``fold_in(rng, t)``,
        as :class:`jasmine.sample.rollout.Rollout` does, so both give the same tokens.
        """
        B, C = ctx_BCN.shape[:2]
        T = a_BTA.shape[1]
        caches = self.prefill(ctx_BCN, a_BTA[:, :C], T, opts, context_rng(rng))
        ids_BTN = jnp.zeros((B, T, *ctx_BCN.shape[2:]), ctx_BCN.dtype).at[:, :C].set(ctx_BCN)

        def body(t, carry):
            ids_BTN, caches = carry
            ids_BN, caches = self.next_frame(
                caches, t, jax.lax.dynamic_index_in_dim(a_BTA, t, 1, keepdims=False), jax.random.fold_in(rng, t), opts
            )
            return jax.lax.dynamic_update_index_in_dim(ids_BTN, ids_BN, t, 1), caches

        return jax.lax.fori_loop(C, T, body, (ids_BTN, caches))[0]
