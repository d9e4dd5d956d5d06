"""MaskGIT generation of one frame's tokens by confidence-based unmasking.

Dimension key: B batch, T frames, N tokens per frame, V vocabulary, A action width.

Only frame ``t`` is ever masked, sampled or re-masked: the confidence ranking runs over
that frame's N positions, never over the context (the reference sorts over the whole
sequence and can overwrite context tokens). After step s of S, ``floor(N cos(pi/2 (s+1)/S))``
tokens stay masked; already-fixed tokens are never re-masked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_masked_after(step: int, steps: int, n: int) -> int:
    """Cosine schedule: tokens still masked after ``step`` (0-based) of ``steps``; 0 after the last."""
    return int(math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps)))


def unmask_step(logits_BNV, ids_BN, mask_BN, n_keep_masked: int, rng, *, temperature: float):
    """One MaskGIT step on a single frame: fill masked tokens, re-mask the least confident."""
    if temperature > 0:
        sampled_BN = jax.random.categorical(rng, logits_BNV / temperature, axis=-1)
    else:
        sampled_BN = jnp.argmax(logits_BNV, axis=-1)
    logp_BN = jnp.take_along_axis(jax.nn.log_softmax(logits_BNV, axis=-1), sampled_BN[..., None], axis=-1)[..., 0]
    ids_BN = jnp.where(mask_BN, sampled_BN.astype(ids_BN.dtype), ids_BN)
    conf_BN = jnp.where(mask_BN, logp_BN, jnp.inf)
    rank_BN = jnp.argsort(jnp.argsort(conf_BN, axis=-1), axis=-1)  # 0 = least confident
    return ids_BN, rank_BN < n_keep_masked


def generate_frame(logits_fn, ids_BTN, t: int, rng, *, steps: int = 25, temperature: float = 1.0):
    """Generate frame ``t`` of ``ids_BTN`` with ``steps`` MaskGIT steps; other frames are returned unchanged.

    ``logits_fn(ids_BTN, mask_BTN) -> logits [B, T, N, V]`` is the dynamics model with its
    actions bound. ``temperature=0`` takes the argmax.
    """
    B, T, N = ids_BTN.shape
    mask_BN = jnp.ones((B, N), bool)
    for s in range(steps):
        frame_mask_BTN = jnp.zeros((B, T, N), bool).at[:, t].set(mask_BN)
        logits_BNV = logits_fn(ids_BTN, frame_mask_BTN)[:, t]
        ids_BN, mask_BN = unmask_step(logits_BNV, ids_BTN[:, t], mask_BN, num_masked_after(s, steps, N),
                                      jax.random.fold_in(rng, s), temperature=temperature)
        ids_BTN = ids_BTN.at[:, t].set(ids_BN)
    return ids_BTN
