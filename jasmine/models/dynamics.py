"""MaskGIT dynamics: predicts masked tokens of each frame from past frames and actions.

Dimension key:
    B batch   T frames   N tokens per frame   D model width   V vocabulary (tokenizer codes)
    A action-latent width

Frame t is conditioned on the action a_t between frames t-1 and t (zeros for t = 0). By
default a_t enters as one extra token prepended to frame t's N tokens (``action_mode=
"prepend"``); the ablation ``"add"`` adds it to every token instead. Attention is causal in
time, so frame t sees frames <= t and actions <= t only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.nn import Attention, AxialTransformer, Precision, Remat


@dataclass(frozen=True)
class DynamicsConfig:
    """Architecture and training masks of the MaskGIT dynamics model."""

    model_dim: int = 512
    ffn_dim: int = 2048
    num_blocks: int = 6
    num_heads: int = 8
    mask_limit: float = 0.5
    """Each sample masks tokens with probability p ~ U[mask_limit, 1)."""
    action_mode: Literal["prepend", "add"] = "prepend"
    """prepend: the action is an extra token per frame; add: it is added to every token."""
    z_loss_weight: float = 0.0


def sample_mask(rng, shape_BTN, mask_limit: float):
    """Per-sample p ~ U[mask_limit, 1), per-token Bernoulli(p); frame 0 never masked."""
    k_p, k_m = jax.random.split(rng)
    p_B = jax.random.uniform(k_p, shape_BTN[:1], minval=mask_limit, maxval=1.0)
    mask_BTN = jax.random.uniform(k_m, shape_BTN) < p_B[:, None, None]
    return mask_BTN.at[:, 0].set(False)


class MaskGITDynamics(nnx.Module):
    def __init__(self, cfg: DynamicsConfig, vocab: int, action_dim: int, *, prec: Precision = Precision(),
                 attention: Attention = "auto", remat: Remat = "none", rngs: nnx.Rngs):
        self.cfg, self.vocab, self.dtype = cfg, vocab, prec.dtype
        self.token_embed = nnx.Embed(vocab, cfg.model_dim, dtype=prec.dtype, param_dtype=prec.param_dtype, rngs=rngs)
        self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.model_dim,), prec.param_dtype))
        self.action_proj = nnx.Linear(action_dim, cfg.model_dim, dtype=prec.dtype, param_dtype=prec.param_dtype,
                                      rngs=rngs)
        self.transformer = AxialTransformer(cfg.model_dim, cfg.model_dim, cfg.ffn_dim, vocab, cfg.num_blocks,
                                            cfg.num_heads, prec=prec, attention=attention, remat=remat, rngs=rngs)

    def embed(self, ids_BTN, mask_BTN, actions_BTA):
        """Token embeddings (mask token where masked) with the action of each frame; [B, T, N(+1), D]."""
        x_BTND = self.token_embed(ids_BTN)
        x_BTND = jnp.where(mask_BTN[..., None], self.mask_token[...].astype(self.dtype), x_BTND)
        a_BT1D = self.action_proj(actions_BTA.astype(self.dtype))[:, :, None]
        if self.cfg.action_mode == "prepend":
            return jnp.concatenate([a_BT1D, x_BTND], axis=2)
        return x_BTND + a_BT1D

    def __call__(self, ids_BTN, mask_BTN, actions_BTA):
        """Logits float32 [B, T, N, V] for every token position."""
        return _drop_action_slot(self.cfg, self.transformer(self.embed(ids_BTN, mask_BTN, actions_BTA)).astype(jnp.float32))


def frame_actions(a_BT1A):
    """Actions between consecutive frames [B, T-1, A] → per-frame conditioning [B, T, A] (zeros at t=0)."""
    return jnp.pad(a_BT1A, ((0, 0), (1, 0), (0, 0)))


def masked_token_metrics(logits_BTNV, ids_BTN, mask_BTN, z_loss_weight: float = 0.0):
    """Cross-entropy (+ z-loss) over masked tokens, and top-1/2/5/16 accuracy on them."""
    m = mask_BTN.astype(jnp.float32)
    denom = jnp.maximum(m.sum(), 1.0)
    logz = jax.nn.logsumexp(logits_BTNV, axis=-1)
    target = jnp.take_along_axis(logits_BTNV, ids_BTN[..., None], axis=-1)[..., 0]
    ce = ((logz - target) * m).sum() / denom
    z_loss = (logz**2 * m).sum() / denom
    rank = (logits_BTNV > target[..., None]).sum(-1)  # how many classes beat the true one
    metrics = {"cross_entropy": ce, "z_loss": z_loss}
    for k in (1, 2, 5, 16):
        metrics[f"top{k}_accuracy"] = ((rank < k) * m).sum() / denom
    return ce + z_loss_weight * z_loss, metrics


def _drop_action_slot(cfg: DynamicsConfig, logits):
    return logits[:, :, 1:] if cfg.action_mode == "prepend" else logits


def prefill(dyn: MaskGITDynamics, ids_BTN, actions_BTA, window: int):
    """Temporal K/V caches (one window) of fully known frames; see ``AxialTransformer.prefill``."""
    _, caches = dyn.transformer.prefill(dyn.embed(ids_BTN, jnp.zeros(ids_BTN.shape, bool), actions_BTA), window)
    return caches


def step_logits(dyn: MaskGITDynamics, ids_BN, mask_BN, action_BA, caches, pos):
    """Logits [B, N, V] of one frame at window position ``pos`` from the caches, and its K/V."""
    x = dyn.embed(ids_BN[:, None], mask_BN[:, None], action_BA[:, None])
    out, kvs = dyn.transformer.step(x, caches, pos)
    return _drop_action_slot(dyn.cfg, out.astype(jnp.float32))[:, 0], kvs
