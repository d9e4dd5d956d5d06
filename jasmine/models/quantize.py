"""Quantizers: cosine-similarity VQ (learned codebook) and FSQ (fixed grid, no codebook to collapse).

Dimension key: X any leading dims (flattened tokens), L latent width, C codebook size.

Both map latents x_XL to (z_q_XL with straight-through gradients, ids_X, aux); aux holds
``codebook_loss`` and ``commitment_loss`` (zero for FSQ) and per-code ``code_counts``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class CodeAge(nnx.Variable):
    """Steps since each code was last selected (for dead-code reset); not trained."""


class VectorQuantizer(nnx.Module):
    """Cosine-similarity VQ with codebook dropout, straight-through gradients and dead-code reset.

    Inputs and codes are L2-normalised; the nearest code maximises cosine similarity.
    """

    def __init__(self, num_codes: int, dim: int, *, dropout: float = 0.0, param_dtype=jnp.float32, rngs: nnx.Rngs):
        init = jax.random.normal(rngs.params(), (num_codes, dim), param_dtype)
        self.codebook = nnx.Param(init / jnp.linalg.norm(init, axis=-1, keepdims=True))
        self.age = CodeAge(jnp.zeros((num_codes,), jnp.int32))
        self.num_codes, self.dropout = num_codes, dropout

    def codes(self):
        cb = self.codebook[...].astype(jnp.float32)
        return cb / jnp.linalg.norm(cb, axis=-1, keepdims=True).clip(1e-6)

    def __call__(self, x_XL, *, rng=None):
        """Quantise the last axis. With ``rng`` (training), each code is dropped per token with p=dropout.

        Returns (z_q_XL straight-through, ids_X, aux) with aux holding codebook_loss,
        commitment_loss and per-code counts.
        """
        x_XL = x_XL.astype(jnp.float32)
        x_XL = x_XL / jnp.linalg.norm(x_XL, axis=-1, keepdims=True).clip(1e-6)
        cb_CL = self.codes()
        sim_XC = x_XL @ cb_CL.T
        if rng is not None and self.dropout > 0:
            keep_XC = jax.random.bernoulli(rng, 1.0 - self.dropout, sim_XC.shape)
            sim_XC = jnp.where(keep_XC, sim_XC, -jnp.inf)
        ids_X = jnp.argmax(sim_XC, axis=-1)
        z_XL = cb_CL[ids_X]
        aux = {
            "codebook_loss": jnp.mean((jax.lax.stop_gradient(x_XL) - z_XL) ** 2),
            "commitment_loss": jnp.mean((x_XL - jax.lax.stop_gradient(z_XL)) ** 2),
            "code_counts": jnp.zeros(self.num_codes, jnp.int32).at[ids_X.reshape(-1)].add(1),
            "inputs": jax.lax.stop_gradient(x_XL),
            "best_sim": jax.lax.stop_gradient(jnp.max(x_XL @ cb_CL.T, axis=-1)),
            "sims": x_XL @ jax.lax.stop_gradient(cb_CL).T,  # differentiable in x only (a soft assignment's)
        }
        z_q_XL = x_XL + jax.lax.stop_gradient(z_XL - x_XL)
        return z_q_XL, ids_X, aux

    def lookup(self, ids_X):
        return self.codes()[ids_X]

    def reset_dead_codes(self, counts_C, rng, *, after_steps: int, inputs_XL=None, sims_X=None) -> jax.Array:
        """Age codes; re-initialise codes unused for ``after_steps`` steps. Returns how many were reset.

        With this step's (normalised) inputs and their best similarity, dead codes move to the
        inputs the codebook fits worst (a k-means++-like restart); otherwise to noisy copies
        of used codes.
        """
        age_C = jnp.where(counts_C > 0, 0, self.age[...] + 1)
        dead_C = age_C >= after_steps
        used_C = counts_C > 0
        k1, k2 = jax.random.split(rng)
        cb = self.codebook[...]
        if inputs_XL is not None:
            x_XL = inputs_XL.reshape(-1, inputs_XL.shape[-1])
            score_X = sims_X.reshape(-1) + 1e-3 * jax.random.gumbel(k1, sims_X.reshape(-1).shape)
            worst = jnp.argsort(score_X)[: self.num_codes]
            fresh = jnp.resize(x_XL[worst], cb.shape).astype(cb.dtype)  # resize: fewer inputs than codes
        else:
            src_C = jax.random.choice(k1, self.num_codes, (self.num_codes,), p=used_C / jnp.maximum(used_C.sum(), 1))
            fresh = cb[src_C] + 0.01 * jax.random.normal(k2, cb.shape, cb.dtype)
        self.codebook[...] = jnp.where(dead_C[:, None] & used_C.any(), fresh, cb)
        self.age[...] = jnp.where(dead_C, 0, age_C)
        return dead_C.sum()


class FiniteScalarQuantizer(nnx.Module):
    """FSQ (Mentzer et al. 2023): each of L = len(levels) channels is bounded and rounded to its levels.

    The codebook is the fixed grid of prod(levels) points, so no code can die. Ids are the
    mixed-radix numbers of the per-channel levels.
    """

    def __init__(self, levels: tuple[int, ...]):
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels {levels} must each be >= 2")
        self.levels = tuple(int(v) for v in levels)
        self.num_codes = math.prod(self.levels)
        self.basis = tuple(int(b) for b in np.cumprod((1,) + self.levels[:-1]))

    def _bound(self, z_XL):
        lv = jnp.asarray(self.levels, jnp.float32)
        half = (lv - 1) * (1 + 1e-3) / 2
        offset = jnp.where(lv % 2 == 0, 0.5, 0.0)
        return jnp.tanh(z_XL + jnp.arctanh(offset / half)) * half - offset

    def __call__(self, x_XL, *, rng=None):
        z_XL = self._bound(x_XL.astype(jnp.float32))
        q_XL = z_XL + jax.lax.stop_gradient(jnp.round(z_XL) - z_XL)
        half = jnp.asarray([v // 2 for v in self.levels], jnp.float32)
        ids_X = jnp.sum(
            (jax.lax.stop_gradient(jnp.round(z_XL)) + half).astype(jnp.int32) * jnp.asarray(self.basis, jnp.int32),
            axis=-1,
        )
        zero = jnp.zeros((), jnp.float32)
        aux = {
            "codebook_loss": zero,
            "commitment_loss": zero,
            "code_counts": jnp.zeros(self.num_codes, jnp.int32).at[ids_X.reshape(-1)].add(1),
        }
        return q_XL / half, ids_X.astype(jnp.int32), aux

    def lookup(self, ids_X):
        half = jnp.asarray([v // 2 for v in self.levels], jnp.float32)
        digits = (ids_X[..., None] // jnp.asarray(self.basis, jnp.int32)) % jnp.asarray(self.levels, jnp.int32)
        return (digits - half) / half


class ContinuousLatent(nnx.Module):
    """No quantisation (a LAM's ``continuous`` option): the latent, L2-normalised as VQ's inputs are, passes as it is.

    Every input gets id 0 (one "code"): what such a LAM's latents mean is measured by clustering them (``jasmine
    actions --kmeans``); no dynamics can be conditioned on it.
    """

    num_codes = 1

    def __call__(self, x_XL, *, rng=None):
        x_XL = x_XL.astype(jnp.float32)
        z_XL = x_XL / jnp.linalg.norm(x_XL, axis=-1, keepdims=True).clip(1e-6)
        ids_X = jnp.zeros(x_XL.shape[:-1], jnp.int32)
        zero = jnp.zeros((), jnp.float32)
        aux = {"codebook_loss": zero, "commitment_loss": zero, "code_counts": jnp.full((1,), ids_X.size, jnp.int32)}
        return z_XL, ids_X, aux


def make_quantizer(cfg, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    """The quantizer a tokenizer/LAM config asks for (``cfg.quantizer``: vq, fsq, or a LAM's continuous)."""
    if cfg.quantizer == "continuous":
        return ContinuousLatent()
    if cfg.quantizer == "fsq":
        return FiniteScalarQuantizer(cfg.fsq_levels)
    return VectorQuantizer(
        cfg.num_latents, cfg.latent_dim, dropout=cfg.codebook_dropout, param_dtype=param_dtype, rngs=rngs
    )
