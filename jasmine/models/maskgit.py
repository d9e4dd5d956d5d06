"""MaskGIT's token distribution and the generation of one frame's tokens by confidence-based unmasking.

Dimension key: B batch, T frames, N tokens per frame, V vocabulary, W logit width, K digits.

A token id is read as mixed-radix digits (:class:`Digits`): the dynamics predicts one
categorical per digit, the logits of all digits side by side (width W = sum of radices).
A VQ token is one digit of radix V: a plain softmax over the vocabulary. An FSQ token is
its grid coordinates, e.g. 4 digits of radix 8: 32 logits instead of 4096, and an
embedding shared by every token with the same digit.

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
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Digits:
    """Token ids as mixed-radix digits (least significant first), one categorical per digit."""

    levels: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.levels)

    @property
    def vocab(self) -> int:
        return math.prod(self.levels)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each digit's logits start in the W logits."""
        return tuple(int(o) for o in np.cumsum((0,) + self.levels[:-1]))

    def digits(self, ids):
        """ids [...] → digits [..., K]."""
        basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        return (ids[..., None] // basis) % np.asarray(self.levels, np.int32)

    def ids(self, digits_K):
        basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        return jnp.sum(digits_K * basis, axis=-1).astype(jnp.int32)

    def log_softmax(self, logits_W) -> list:
        """Per digit, its log-probabilities [..., radix]."""
        return [jax.nn.log_softmax(logits_W[..., o : o + v], axis=-1) for o, v in zip(self.offsets, self.levels)]

    def log_prob(self, logits_W, ids):
        """log p(ids) = sum over digits of log p(digit)."""
        d = self.digits(ids)
        return sum(jnp.take_along_axis(lp, d[..., k : k + 1], axis=-1)[..., 0]
                   for k, lp in enumerate(self.log_softmax(logits_W)))

    def sample(self, rng, logits_W, temperature: float, ordinal: bool = False):
        """Ids drawn digit by digit; ``temperature`` 0: each digit's most likely value or, with ``ordinal``
        (digits that are ordered levels, as FSQ's), its expected value rounded: the least squared error."""
        parts = [logits_W[..., o : o + v] for o, v in zip(self.offsets, self.levels)]
        if temperature > 0:
            keys = jax.random.split(rng, len(parts))
            d = [jax.random.categorical(k, p / temperature, axis=-1) for k, p in zip(keys, parts)]
        elif ordinal:
            d = [jnp.round(jax.nn.softmax(p, axis=-1) @ jnp.arange(p.shape[-1], dtype=p.dtype)).astype(jnp.int32)
                 for p in parts]
        else:
            d = [jnp.argmax(p, axis=-1) for p in parts]
        return self.ids(jnp.stack(d, axis=-1))


@dataclass(frozen=True)
class MaskGITOptions:
    steps: int = 25
    """MaskGIT steps per frame (steps that fix no token are skipped: at most one model pass per token)."""
    temperature: float = 1.0
    """Sampling temperature (0 = argmax, and no choice noise)."""
    choice_temperature: float = 4.5
    """Gumbel noise on the confidences that pick which tokens to keep, annealed to 0 (MaskGIT's 4.5)."""
    ordinal: bool = False
    """With temperature 0 and FSQ tokens: each digit's expected level (rounded) instead of its most likely one."""


def mask_schedule(steps: int, n: int) -> np.ndarray:
    """Cosine schedule: how many of ``n`` tokens are still masked after each of ``steps`` steps."""
    s = np.arange(1, steps + 1)
    return np.floor(n * np.cos(math.pi / 2 * s / steps) + 1e-4).astype(np.int32)


def working_steps(steps: int, n: int) -> np.ndarray:
    """Indices of the steps that fix at least one token (the others are no-ops)."""
    counts = mask_schedule(steps, n)
    return np.flatnonzero(counts < np.concatenate([[n], counts[:-1]])).astype(np.int32)


def unmask_step(logits_BNW, ids_BN, mask_BN, n_keep_masked, rng, *, temperature: float, choice_noise=0.0,
                digits: Digits | None = None, ordinal: bool = False):
    """One MaskGIT step on a single frame: fill masked tokens, re-mask the least confident.

    ``choice_noise`` scales Gumbel noise added to the confidences (0 = none). ``digits``
    reads the logits (default: one softmax over the last axis).
    """
    digits = digits or Digits((logits_BNW.shape[-1],))
    k_sample, k_choice = jax.random.split(rng)
    sampled_BN = digits.sample(k_sample, logits_BNW, temperature, ordinal)
    logp_BN = digits.log_prob(logits_BNW, sampled_BN)
    ids_BN = jnp.where(mask_BN, sampled_BN.astype(ids_BN.dtype), ids_BN)
    conf_BN = logp_BN + choice_noise * jax.random.gumbel(k_choice, logp_BN.shape)
    conf_BN = jnp.where(mask_BN, conf_BN, jnp.inf)
    rank_BN = jnp.argsort(jnp.argsort(conf_BN, axis=-1, stable=True), axis=-1, stable=True)  # 0 = least confident
    return ids_BN, rank_BN < n_keep_masked


def unmask_frame(frame_logits_fn, ids_BN, rng, opts: MaskGITOptions, digits: Digits | None = None):
    """Run ``opts.steps`` MaskGIT steps from a fully masked frame; ``frame_logits_fn(ids_BN, mask_BN) -> [B, N, W]``."""
    n, steps = ids_BN.shape[-1], opts.steps
    counts, kept = jnp.asarray(mask_schedule(steps, n)), jnp.asarray(working_steps(steps, n))
    choice = opts.choice_temperature if opts.temperature > 0 else 0.0

    def body(i, carry):
        ids_BN, mask_BN = carry
        s = kept[i]
        logits_BNV = frame_logits_fn(ids_BN, mask_BN)
        return unmask_step(logits_BNV, ids_BN, mask_BN, counts[s], jax.random.fold_in(rng, s),
                           temperature=opts.temperature, choice_noise=choice * (1.0 - (s + 1) / steps), digits=digits,
                           ordinal=opts.ordinal)

    ids_BN, _ = jax.lax.fori_loop(0, len(kept), body, (ids_BN, jnp.ones(ids_BN.shape, bool)))
    return ids_BN


def generate_frame(logits_fn, ids_BTN, t, rng, opts: MaskGITOptions, digits: Digits | None = None):
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
