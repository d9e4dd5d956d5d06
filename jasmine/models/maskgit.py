"""MaskGIT's token distribution and the generation of one frame's tokens by confidence-based unmasking.

Dimension key: B batch, T frames, N tokens per frame, V vocabulary, W logit width, K digits.

Tokens are read as digits (:class:`jasmine.models.digits.Digits`), one categorical each.

Only the frame being generated is ever masked, sampled or re-masked: the confidence
ranking runs over that frame's N positions, never over the context (the reference sorts
over the whole sequence and can overwrite context tokens). After step s of S,
``floor(N cos(pi/2 (s+1)/S))`` tokens stay masked; fixed tokens are never re-masked.
Which tokens stay masked is chosen by confidence (log-probability of the sampled token)
plus Gumbel noise scaled by ``choice_temperature * (1 - (s+1)/S)``: MaskGIT's choice
temperature, annealed to zero with the schedule, so early steps fix tokens spread over
the frame rather than only the most confident ones. ``temperature=0`` takes the argmax
and fixes the most confident tokens first, with no noise at all (deterministic).

A step after which as many tokens stay masked as before it is a no-op: it re-masks
exactly the positions it sampled, and masked positions enter the model as the mask token
whatever their ids. Such steps are skipped (each kept step still uses its own random
key), so S steps cost at most min(S, N) model passes with unchanged results; with
S = 25 and N = 16 that is 16 passes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jasmine.models.digits import Digits, SamplingOptions


def mask_schedule(steps: int, n: int) -> np.ndarray:
    """Cosine schedule: how many of ``n`` tokens are still masked after each of ``steps`` steps."""
    s = np.arange(1, steps + 1)
    return np.floor(n * np.cos(math.pi / 2 * s / steps) + 1e-4).astype(np.int32)


def working_steps(steps: int, n: int) -> np.ndarray:
    """Indices of the steps that fix at least one token (the others are no-ops)."""
    counts = mask_schedule(steps, n)
    return np.flatnonzero(counts < np.concatenate([[n], counts[:-1]])).astype(np.int32)


def unmask_step(
    logits_BNW,
    ids_BN,
    mask_BN,
    n_keep_masked,
    rng,
    *,
    temperature: float,
    choice_noise=0.0,
    digits: Digits | None = None,
    ordinal: bool = False,
    top_k: int = 0,
):
    """One MaskGIT step on a single frame: fill masked tokens, re-mask the least confident.

    ``choice_noise`` scales Gumbel noise added to the confidences (0 = none). ``digits``
    reads the logits (default: one softmax over the last axis).
    """
    digits = digits or Digits((logits_BNW.shape[-1],))
    k_sample, k_choice = jax.random.split(rng)
    sampled_BN = digits.sample(k_sample, logits_BNW, temperature, ordinal, top_k)
    logp_BN = digits.log_prob(logits_BNW, sampled_BN)
    ids_BN = jnp.where(mask_BN, sampled_BN.astype(ids_BN.dtype), ids_BN)
    conf_BN = logp_BN + choice_noise * jax.random.gumbel(k_choice, logp_BN.shape)
    conf_BN = jnp.where(mask_BN, conf_BN, jnp.inf)
    rank_BN = jnp.argsort(jnp.argsort(conf_BN, axis=-1, stable=True), axis=-1, stable=True)  # 0 = least confident
    return ids_BN, rank_BN < n_keep_masked


def unmask_frame(frame_logits_fn, ids_BN, rng, opts: SamplingOptions, digits: Digits | None = None):
    """Run ``opts.steps`` MaskGIT steps from a fully masked frame; ``frame_logits_fn(ids_BN, mask_BN) -> [B, N, W]``."""
    opts = opts.resolved(maskgit_options=True)
    n, steps = ids_BN.shape[-1], opts.steps
    counts, kept = jnp.asarray(mask_schedule(steps, n)), jnp.asarray(working_steps(steps, n))
    choice = opts.choice_temperature if opts.temperature > 0 else 0.0

    def body(i, carry):
        ids_BN, mask_BN = carry
        s = kept[i]
        logits_BNV = frame_logits_fn(ids_BN, mask_BN)
        return unmask_step(
            logits_BNV,
            ids_BN,
            mask_BN,
            counts[s],
            jax.random.fold_in(rng, s),
            temperature=opts.temperature,
            choice_noise=choice * (1.0 - (s + 1) / steps),
            digits=digits,
            ordinal=opts.ordinal,
            top_k=opts.top_k,
        )

    ids_BN, _ = jax.lax.fori_loop(0, len(kept), body, (ids_BN, jnp.ones(ids_BN.shape, bool)))
    return ids_BN


def generate_frame(logits_fn, ids_BTN, t, rng, opts: SamplingOptions, digits: Digits | None = None):
    """Generate frame ``t`` of ``ids_BTN`` (full forward per step; no cache); other frames are unchanged.

    ``logits_fn(ids_BTN, mask_BTN) -> [B, T, N, V]`` is the dynamics with its actions bound.
    """
    T = ids_BTN.shape[1]
    at_t = (jnp.arange(T) == t)[None, :, None]

    def frame_logits(ids_BN, mask_BN):
        full_BTN = jnp.where(at_t, ids_BN[:, None], ids_BTN)
        return jnp.take(logits_fn(full_BTN, at_t & mask_BN[:, None]), t, axis=1)

    ids_BN = unmask_frame(frame_logits, jnp.take(ids_BTN, t, axis=1), rng, opts, digits)
    return jnp.where(at_t, ids_BN[:, None], ids_BTN)
