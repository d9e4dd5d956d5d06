"""Genie: a frozen tokenizer, an action source, and the MaskGIT dynamics.

Dimension key:
    B batch   T frames   H/W/C frame height/width/channels   N tokens per frame
    A action-latent width

The action source is either a latent action model (frozen from its own run, or co-trained
with the dynamics, keeping its decoder and losses) or an embedding of ground-truth actions.
Data convention: ``actions[t]`` is taken after ``frames[t]``, so the action between frames
t-1 and t is ``actions[t-1]``; LAM ids ``latent_actions[t]`` (t >= 1) already are.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.dynamics import DynamicsConfig, MaskGITDynamics, frame_actions
from jasmine.models.lam import LAMConfig, LatentActionModel
from jasmine.models.nn import Attention, Precision, Remat
from jasmine.models.tokenizer import Tokenizer, TokenizerConfig

ActionSource = Literal["lam", "gt"]


class Genie(nnx.Module):
    def __init__(self, tok_cfg: TokenizerConfig, dyn_cfg: DynamicsConfig, image_shape: tuple[int, int, int], *,
                 action_source: ActionSource = "lam", lam_cfg: LAMConfig = LAMConfig(), num_actions: int = 0,
                 prec: Precision = Precision(), attention: Attention = "auto", remat: Remat = "none", rngs: nnx.Rngs):
        kw = dict(prec=prec, attention=attention, remat=remat, rngs=rngs)
        self.action_source = action_source
        self.tokenizer = Tokenizer(tok_cfg, image_shape, **kw)
        if action_source == "lam":
            self.lam = LatentActionModel(lam_cfg, image_shape, **kw)
            self.action_embed = None
        else:
            if num_actions <= 0:
                raise ValueError("ground-truth actions need a dataset with actions (num_actions > 0)")
            self.lam = None
            self.action_embed = nnx.Embed(num_actions, lam_cfg.latent_dim, param_dtype=prec.param_dtype, rngs=rngs)
        self.dynamics = MaskGITDynamics(dyn_cfg, tok_cfg.num_latents, lam_cfg.latent_dim, **kw)

    def tokens(self, batch) -> jax.Array:
        """Token ids int32 [B, T, N] of the batch (pre-tokenized, or encoded now; no gradient)."""
        if "tokens" in batch:
            return batch["tokens"]
        return jax.lax.stop_gradient(self.tokenizer.encode(batch["frames"].astype(jnp.float32) / 255.0))

    def action_ids(self, batch) -> jax.Array:
        """Discrete action between frames t-1 and t at index t-1: int32 [B, T-1]."""
        if self.action_source == "gt":
            return batch["actions"][:, :-1]
        if "latent_actions" in batch:
            return batch["latent_actions"][:, 1:]
        return self.lam.infer_actions(batch["frames"].astype(jnp.float32) / 255.0)

    def action_vectors(self, ids_BT1) -> jax.Array:
        """Action latents [B, T-1, A] for action ids."""
        return self.action_embed(ids_BT1) if self.action_source == "gt" else self.lam.action_latents(ids_BT1)

    def frame_conditioning(self, batch, *, lam_rng=None, co_train: bool = False):
        """Per-frame action inputs [B, T, A] (zeros at t=0), and the LAM's outputs when co-training."""
        if co_train:
            frames = batch["frames"].astype(jnp.float32) / 255.0
            pred_BT1HWC, ids_BT1, z_BT1A, aux = self.lam(frames, rng=lam_rng)
            return frame_actions(z_BT1A), {"pred": pred_BT1HWC, "target": frames[:, 1:], "ids": ids_BT1, **aux}
        z_BT1A = self.action_vectors(self.action_ids(batch))
        return frame_actions(jax.lax.stop_gradient(z_BT1A) if self.lam is not None else z_BT1A), None
