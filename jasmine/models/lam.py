"""Latent action model (LAM): a discrete latent action between consecutive frames.

Dimension key:
    B batch   T frames   N patches per frame   I patch width (P*P*C)
    L latent (action) width   A number of latent actions (codebook size)

A learned action token is prepended to each frame's patches; a temporally causal axial
encoder runs over the N+1 tokens; its output at the action token of frame t (t >= 1) is
vector-quantised into a_t, the action between frame t-1 and frame t. The decoder
reconstructs frame t from frame t-1's patches plus a projection of a_t added to every patch (with ``residual``, it
predicts the change from frame t-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.linear import Precision, linear_layers, output_linear
from jasmine.models.nn import Attention, AxialTransformer, Remat
from jasmine.models.quantize import make_quantizer
from jasmine.models.tokenizer import TokenizerConfig, check_patch_size, patchify, unpatchify


@dataclass(frozen=True)
class LAMConfig(TokenizerConfig):
    """Architecture of the latent action model: a VQ-VAE config with a tiny codebook of actions."""

    num_latents: int = 6
    """Number of latent actions (Genie: 6 for CoinRun; 8 in general)."""
    quantizer: Literal["vq", "fsq", "continuous"] = "vq"
    """vq: a learned codebook of ``num_latents`` actions (Genie's); fsq: a fixed grid of prod(fsq_levels) actions;
    continuous: no quantisation at all (the latent, unit-normalised, goes to the decoder): a measurement of what
    unbounded action capacity finds, read by clustering (``jasmine actions --kmeans``), not a LAM to train dynamics
    with (it has one code)."""
    codebook_dropout: float = 0.0
    dead_code_reset_steps: int = 50
    label_classes: int = 0
    """Classes of a linear head on the quantised action, trained on labelled transitions (set by the LAM's
    --action-labels from the data's effective classes; 0: no head)."""
    residual: bool = False
    """The decoder predicts the change from the previous frame (frame t-1 + its output), so copying is free and
    the action has to explain what differs; off: it predicts frame t itself (Genie's LAM)."""
    decoder_positions: Literal["absolute", "rope"] = "absolute"
    """How the decoder knows where a patch is: ``absolute`` sinusoids of its index (Genie's), or ``rope``: 2D
    rotary positions in its spatial attention, relative only, so a change ("the paddle moves one cell left") is
    easier to decode than a place ("the paddle ends at column 3"), which reaches it only through the frame's
    edges (measured on Breakout: docs/tuning.md)."""
    adversary: bool = False
    """A small head that guesses the code into frame t from frame t-1 alone (set by the LAM's --state-adversary;
    see :meth:`LatentActionModel.guess_codes`)."""
    encoder_positions: Literal["absolute", "none"] = "absolute"
    """How the encoder (and the IDM's) knows where a patch is: ``absolute`` sinusoids (Genie's), or ``none``: each
    patch sees its own place in earlier frames (temporal attention) but not where it is, so the action token pools
    a bag of local changes; a place reaches the codes only through what a patch shows (a small object's offset
    inside its patch)."""

    @property
    def vocab_size(self) -> int:
        """Number of distinct actions (a continuous LAM: one, its single id)."""
        return 1 if self.quantizer == "continuous" else super().vocab_size


def action_features(action_token, encoder, patch_size: int, videos_BTHWC):
    """A learned action token before each frame's patches, through the temporally causal encoder; its output at
    frames 1..T-1 [B, T-1, L] (it has seen frames 0..t)."""
    x_BTNI = patchify(videos_BTHWC, patch_size)
    B, T, _, patch_dim = x_BTNI.shape
    tok_BT1I = jnp.broadcast_to(action_token[...].astype(x_BTNI.dtype), (B, T, 1, patch_dim))
    return encoder(jnp.concatenate([tok_BT1I, x_BTNI], axis=2))[:, 1:, 0]


class LatentActionModel(nnx.Module):
    def __init__(
        self,
        cfg: LAMConfig,
        image_shape: tuple[int, int, int],
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        rngs: nnx.Rngs,
    ):
        check_patch_size(image_shape, cfg.patch_size, "--lam-model.patch-size")
        self.cfg, self.image_shape = cfg, tuple(image_shape)
        patch_dim = cfg.patch_size**2 * image_shape[2]
        grid = (image_shape[0] // cfg.patch_size, image_shape[1] // cfg.patch_size)
        kw = dict(prec=prec, attention=attention, remat=remat, rngs=rngs)
        self.action_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (patch_dim,), prec.param_dtype))
        self.encoder = AxialTransformer(
            patch_dim, cfg.model_dim, cfg.ffn_dim, cfg.code_dim, cfg.num_blocks, cfg.num_heads,
            space_positions=cfg.encoder_positions, **kw,
        )  # fmt: skip
        self.vq = make_quantizer(cfg, param_dtype=prec.param_dtype, rngs=rngs)
        self.action_up = linear_layers(prec, rngs)(cfg.code_dim, patch_dim)
        self.decoder = AxialTransformer(
            patch_dim, cfg.model_dim, cfg.ffn_dim, patch_dim, cfg.num_blocks, cfg.num_heads,
            space_positions=cfg.decoder_positions, grid=grid, **kw,
        )  # fmt: skip
        if cfg.residual:  # starts as an exact copy of frame t-1 (ReZero-style gate at 0), then learns the change
            self.residual_gate = nnx.Param(jnp.zeros((), prec.param_dtype))
        if cfg.adversary:  # per-patch features of frame t-1, flattened in place order, through an MLP
            lin = linear_layers(prec, rngs)
            self.adv_patch, self.adv_hidden = lin(patch_dim, 32), lin(32 * grid[0] * grid[1], 256)
            self.adv_out = output_linear(prec, rngs)(256, cfg.vocab_size)
        if cfg.label_classes:  # a few labels: the quantised action classifies the real one (--action-labels)
            self.label_head = output_linear(prec, rngs)(cfg.code_dim, cfg.label_classes)

    def features(self, videos_BTHWC):
        """The encoder's output at the action token of frames 1..T-1 [B, T-1, L], before quantisation."""
        return action_features(self.action_token, self.encoder, self.cfg.patch_size, videos_BTHWC)

    @property
    def num_codes(self) -> int:
        return self.cfg.vocab_size

    def codes(self, h_BT1L):
        """Action ids of encoder outputs (``features``)."""
        return self.vq(h_BT1L)[1].astype(jnp.int32)

    def encode(self, videos_BTHWC, *, rng=None):
        """Latent actions for t = 1..T-1: (z_q_BT'L straight-through, ids_BT', VQ aux) with T' = T-1."""
        return self.vq(self.features(videos_BTHWC), rng=rng)

    def decode(self, videos_BTHWC, z_BT1L):
        """Predict frames 1..T-1 from frames 0..T-2 and the latent action of each step."""
        h, w, _ = self.image_shape
        prev_BT1NI = patchify(videos_BTHWC[:, :-1], self.cfg.patch_size)
        a_BT11I = self.action_up(z_BT1L.astype(prev_BT1NI.dtype))[:, :, None]  # own projection: a strong signal
        out_BT1NI = self.decoder(prev_BT1NI + a_BT11I).astype(jnp.float32)
        if self.cfg.residual:
            out_BT1NI = prev_BT1NI.astype(jnp.float32) + self.residual_gate[...].astype(jnp.float32) * out_BT1NI
        else:
            out_BT1NI = jax.nn.sigmoid(out_BT1NI)
        return unpatchify(out_BT1NI, self.cfg.patch_size, h, w)

    def guess_codes(self, videos_BTHWC):
        """The adversary's logits [B, T-1, A] for the code into frame t, from frame t-1 alone (frames 0..T-2)."""
        h_BT1NE = jax.nn.gelu(self.adv_patch(patchify(videos_BTHWC[:, :-1], self.cfg.patch_size)))
        h_BT1F = jax.nn.gelu(self.adv_hidden(h_BT1NE.reshape(*h_BT1NE.shape[:2], -1)))
        return self.adv_out(h_BT1F).astype(jnp.float32)

    def __call__(self, videos_BTHWC, *, rng=None):
        """Returns (predicted frames 1..T-1, action ids [B, T-1], z_q [B, T-1, L], VQ aux)."""
        z_BT1L, ids_BT1, aux = self.encode(videos_BTHWC, rng=rng)
        return self.decode(videos_BTHWC, z_BT1L), ids_BT1, z_BT1L, aux

    def infer_actions(self, videos_BTHWC):
        """Action ids int32 [B, T-1]: entry t-1 is the action between frames t-1 and t."""
        return self.encode(videos_BTHWC)[1].astype(jnp.int32)

    def action_latents(self, ids_BX):
        return self.vq.lookup(ids_BX)


class InverseDynamicsModel(nnx.Module):
    """The supervised ceiling of the LAM: its encoder (same architecture, same action token) with a linear head
    that classifies the real action between frames t-1 and t (trained on labels, ``jasmine train idm``)."""

    def __init__(
        self,
        cfg: LAMConfig,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        rngs: nnx.Rngs,
    ):
        check_patch_size(image_shape, cfg.patch_size, "--model.patch-size")
        self.cfg, self.image_shape, self.num_classes = cfg, tuple(image_shape), num_classes
        patch_dim = cfg.patch_size**2 * image_shape[2]
        self.action_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (patch_dim,), prec.param_dtype))
        self.encoder = AxialTransformer(
            patch_dim, cfg.model_dim, cfg.ffn_dim, cfg.code_dim, cfg.num_blocks, cfg.num_heads,
            space_positions=cfg.encoder_positions, prec=prec, attention=attention, remat=remat, rngs=rngs,
        )  # fmt: skip
        self.head = output_linear(prec, rngs)(cfg.code_dim, num_classes)

    def features(self, videos_BTHWC):
        return action_features(self.action_token, self.encoder, self.cfg.patch_size, videos_BTHWC)

    @property
    def num_codes(self) -> int:
        return self.num_classes

    def __call__(self, videos_BTHWC):
        """Class logits [B, T-1, num_classes] of the action into each frame t >= 1."""
        return self.head(self.features(videos_BTHWC)).astype(jnp.float32)

    def codes(self, h_BT1L):
        """The predicted class of encoder outputs (``features``)."""
        return jnp.argmax(self.head(h_BT1L), axis=-1).astype(jnp.int32)
