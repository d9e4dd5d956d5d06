"""Diffusion-forcing dynamics over MAE latents, and a sampler that walks the noise path training uses.

Dimension key:
    B batch   T frames   N latent tokens per frame   L latent width   D model width
    A action-latent width   W window (frames)   K denoising steps

**Noise path** (rectified flow, signal level τ ∈ [0, 1], 1 = clean):
``z_τ = τ·z + (1 − τ)·ε`` with ε ~ N(0, I). Training gives every frame of a window its own τ,
drawn uniformly from the grid {0, 1/S, ..., 1} (``--model.noise-levels`` S, so the clean end is
drawn too), and the model predicts the clean latents (x-prediction) of every frame from the
noisy frames up to it (causal in time), each frame's action and each frame's τ. Each frame
holds N + 2 tokens: its action, its noise level, and its N noisy latents. The loss is the
per-frame MSE, weighted by the ramp w(τ) = 0.9·τ + 0.1 (``--model.ramp-weight``).

**Sampling** a frame starts from ε (τ_0 = 0) and takes K steps τ_k = k/K. Step k predicts
x̂ = f(z_τk, τ_k), takes the noise it implies, ε̂ = (z_τk − τ_k·x̂)/(1 − τ_k), and moves to the
next level *on the training path*: z_τk+1 = τ_k+1·x̂ + (1 − τ_k+1)·ε̂ (an Euler step of the flow;
a clean prediction is never fed back as a noisy input). At τ_K = 1 the frame is x̂. Past
frames enter at the context level τ_c = 1 − ``--context-noise`` (default 0.1) on the training grid,
tagged with exactly τ_c, and noised with a draw per clip and window position from the rollout's
context key (``context_rng``: a fresh one per seed and batch, so eval's clips never share their
noise). Drawn by position from one key, it makes the cached sampler (past frames' K/V kept,
one-frame passes) and the uncached one (full window per step) see the same inputs.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.digits import SamplingOptions
from jasmine.models.dynamics import MASKGIT_ONLY, CachedFrames, DynamicsConfig, refuse_options
from jasmine.models.linear import Precision, linear_layers
from jasmine.models.nn import Attention, AxialTransformer, Remat, sinusoidal_rows

CONTEXT_NOISE_SEED = 17


DEFAULT_STEPS, DEFAULT_CONTEXT_NOISE = 16, 0.1
STATS_MOMENTUM = 0.99


class LatentStat(nnx.Variable):
    """A running statistic of the clean latents (``--model.latent-norm``): not trained, updated by training
    steps, stored in the run."""


_MASKGIT_ONLY = MASKGIT_ONLY + (("--model.z-loss-weight", "z_loss_weight"),)


def noise(z, tau, eps):
    """The training path: z_τ = τ·z + (1 − τ)·ε (τ broadcast over the trailing N, L axes)."""
    tau = jnp.asarray(tau, jnp.float32)[..., None, None]
    return tau * z + (1.0 - tau) * eps


def sample_levels(rng, shape_BT, levels: int):
    """Signal levels τ uniform on {0, 1/S, ..., 1} (S = ``levels``), one per frame."""
    return jax.random.randint(rng, shape_BT, 0, levels + 1).astype(jnp.float32) / levels


def on_grid(tau, levels: int | None):
    """``tau`` rounded to the training grid {0, 1/S, ..., 1} (S = ``levels``; None: unchanged)."""
    return tau if levels is None else jnp.round(tau * levels) / levels


def denoise(predict, eps, steps: int, levels: int | None = None):
    """K Euler steps along the training path from noise ``eps`` (τ = 0) to τ = 1; ``predict(z_τ, τ) -> x̂``.

    Each step's levels are rounded to the grid of ``levels`` the model trained on (exact when K divides it), so
    the level embedding never sees a phase training did not. One compiled copy of ``predict`` (a loop, not K
    unrolled forwards); the last step's z = 1·x̂ + 0·ε̂ is x̂."""
    if levels is not None and steps > levels:
        raise ValueError(
            f"--steps {steps} exceeds the {levels} noise levels the model trained on (--model.noise-levels)"
        )

    def step(k, z):
        tau = on_grid(k.astype(jnp.float32) / steps, levels)
        nxt = on_grid((k + 1).astype(jnp.float32) / steps, levels)
        x_hat = predict(z, tau)
        eps_hat = (z - tau * x_hat) / (1.0 - tau)
        return nxt * x_hat + (1.0 - nxt) * eps_hat

    return jax.lax.fori_loop(0, steps, step, eps)


def context_eps(key, pos, shape_BNL):
    """The noise [B, N, L] (a draw per clip) of past frames at window position ``pos`` (may be traced)."""
    return jax.random.normal(jax.random.fold_in(key, pos), shape_BNL, jnp.float32)


def context_key(context_rng):
    """The rollout's context key, or a fixed one where a caller gives none."""
    return jax.random.key(CONTEXT_NOISE_SEED) if context_rng is None else context_rng


class DiffusionDynamics(CachedFrames, nnx.Module):
    """x-prediction of every frame's clean latents from noisy latents, levels and actions; causal in time.

    The dynamics-family interface of ``jasmine.models.dynamics.MaskGITDynamics``, over MAE latents
    [.., N, L] instead of token ids [.., N]. Sampling: ``--steps`` is K, ``--context-noise`` the
    context level; the token options (temperature, top-k, ordinal, choice temperature) are refused.
    """

    family = "diffusion"
    continuous = True
    maskgit_options = False

    def slots_per_pass(self, n: int) -> int:
        """Slots one cached sampling pass runs (the rows of its matmuls): the frame's latents, action and level."""
        return n + 2

    @staticmethod
    def check_config(cfg: DynamicsConfig) -> None:
        refuse_options(cfg, _MASKGIT_ONLY, "the diffusion dynamics noises latents instead of masking tokens")
        if cfg.noise_levels < 1:
            raise ValueError(f"--model.noise-levels must be >= 1, got {cfg.noise_levels}")
        if not 0.0 <= cfg.latent_std_floor <= 1.0:
            raise ValueError(f"--model.latent-std-floor must be in [0, 1], got {cfg.latent_std_floor}")

    @classmethod
    def check_sampling(cls, opts: SamplingOptions, tok_cfg=None) -> None:
        token_only = [
            flag
            for flag, bad in (
                ("--temperature", opts.temperature != 1.0),
                ("--top-k", opts.top_k != 0),
                ("--ordinal", opts.ordinal),
                ("--choice-temperature", opts.choice_temperature is not None),
            )
            if bad
        ]
        if token_only:
            raise ValueError(
                f"{', '.join(token_only)}: token sampling option(s); the diffusion dynamics denoises "
                f"latents (use --steps and --context-noise)"
            )
        if opts.steps is not None and opts.steps < 1:
            raise ValueError(f"--steps must be >= 1 denoising step, got {opts.steps}")
        if opts.context_noise is not None and not 0.0 <= opts.context_noise < 1.0:
            raise ValueError(f"--context-noise must be in [0, 1), got {opts.context_noise}")

    @classmethod
    def resolve_sampling(cls, opts: SamplingOptions) -> SamplingOptions:
        return replace(
            opts,
            steps=opts.steps or DEFAULT_STEPS,
            context_noise=DEFAULT_CONTEXT_NOISE if opts.context_noise is None else opts.context_noise,
        )

    def __init__(
        self,
        cfg: DynamicsConfig,
        latent_dim: int,
        action_dim: int,
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        phase: int = 1,
        rngs: nnx.Rngs,
    ):
        self.check_config(cfg)
        self.cfg, self.latent_dim, self.dtype = cfg, latent_dim, prec.dtype
        lin = linear_layers(prec, rngs)
        self.latent_in, self.action_proj, self.level_proj = (
            lin(latent_dim, cfg.model_dim),
            lin(action_dim, cfg.model_dim),
            lin(cfg.model_dim, cfg.model_dim),
        )
        if cfg.latent_norm:  # EMA accumulators of E[z] and E[z^2] per channel, and their total weight
            self.stat_mean, self.stat_sq = LatentStat(jnp.zeros(latent_dim)), LatentStat(jnp.zeros(latent_dim))
            self.stat_weight = LatentStat(jnp.zeros(()))
        self.transformer = AxialTransformer(
            cfg.model_dim,
            cfg.model_dim,
            cfg.ffn_dim,
            latent_dim,
            cfg.num_blocks,
            cfg.num_heads,
            prec=prec,
            attention=attention,
            remat=remat,
            time_positions=cfg.time_positions,
            phase=phase,
            rngs=rngs,
        )

    def receptive_frames(self, band: int) -> int:
        """Frames (itself included) a frame's output depends on with an attention band of ``band`` frames."""
        return self.transformer.receptive_frames(band)

    def embed(self, z_BTNL, tau_BT, a_BTA):
        """Tokens [B, T, 2 + N, D]: the action, the noise level (sinusoids of 1000·τ), the latents."""
        B, T = tau_BT.shape
        level_BTD = sinusoidal_rows(1000.0 * tau_BT.reshape(-1), self.cfg.model_dim).reshape(B, T, -1)
        a_BT1D = self.action_proj(a_BTA.astype(self.dtype))[:, :, None]
        l_BT1D = self.level_proj(level_BTD.astype(self.dtype))[:, :, None]
        return jnp.concatenate([a_BT1D, l_BT1D, self.latent_in(z_BTNL.astype(self.dtype))], axis=2)

    def __call__(self, z_BTNL, tau_BT, a_BTA, t0=0, band: int | None = None):
        """Predicted clean latents float32 [B, T, N, L] of every frame (``t0``, ``band``: see ``MaskGITDynamics``)."""
        return self.transformer(self.embed(z_BTNL, tau_BT, a_BTA), t0, band)[:, :, 2:].astype(jnp.float32)

    # ------------------------------------------------------------------ latent normalisation

    def latent_stats(self):
        """Per-channel mean and std [L] the noise path normalises with (0 and 1 without --model.latent-norm, or
        before the first training step)."""
        if not self.cfg.latent_norm:
            return jnp.zeros(self.latent_dim), jnp.ones(self.latent_dim)
        w = self.stat_weight[...]
        seen = w > 0
        mean = jnp.where(seen, self.stat_mean[...] / jnp.where(seen, w, 1.0), 0.0)
        var = jnp.where(seen, self.stat_sq[...] / jnp.where(seen, w, 1.0) - mean**2, 1.0)
        std = jnp.sqrt(jnp.maximum(var, 1e-6))
        return mean, jnp.maximum(std, self.cfg.latent_std_floor * jnp.median(std))

    @property
    def tracks_tokens(self) -> bool:
        """Whether training steps pass their clean latents to :meth:`track` (after the update)."""
        return self.cfg.latent_norm

    def track(self, z_BTNL):
        """Fold a training batch's clean latents into the running statistics (the train step calls it after the
        optimizer update, outside the gradient)."""
        z = jax.lax.stop_gradient(z_BTNL).reshape(-1, self.latent_dim)
        m = STATS_MOMENTUM
        self.stat_mean[...] = m * self.stat_mean[...] + (1 - m) * z.mean(0)
        self.stat_sq[...] = m * self.stat_sq[...] + (1 - m) * (z**2).mean(0)
        self.stat_weight[...] = m * self.stat_weight[...] + (1 - m)

    def _norm(self, z):
        if not self.cfg.latent_norm:
            return z
        mean, std = self.latent_stats()
        return (z - mean) / std

    def _raw(self, x):
        if not self.cfg.latent_norm:
            return x
        mean, std = self.latent_stats()
        return x * std + mean

    def _clip(self, x_hat):
        """x̂ clipped to the MAE's tanh range (-1, 1), in the normalised space the noise path runs in."""
        return self._norm(jnp.clip(self._raw(x_hat), -1.0, 1.0))

    def loss(self, z_BTNL, a_BTA, rng, *, training: bool = True):
        """Diffusion forcing: per-frame levels on the grid, x-prediction MSE (ramp-weighted) of the (normalised)
        latents; ``rng`` holds the two keys of the levels and the noise."""
        z_BTNL = self._norm(z_BTNL)
        k_tau, k_eps = rng
        tau_BT = sample_levels(k_tau, z_BTNL.shape[:2], self.cfg.noise_levels)
        eps = jax.random.normal(k_eps, z_BTNL.shape, jnp.float32)
        mse_BT = jnp.mean((self(noise(z_BTNL, tau_BT, eps), tau_BT, a_BTA) - z_BTNL) ** 2, axis=(2, 3))
        w_BT = 0.9 * tau_BT + 0.1 if self.cfg.ramp_weight else jnp.ones_like(tau_BT)
        loss = jnp.sum(w_BT * mse_BT) / jnp.sum(w_BT)
        clean = tau_BT == 1.0
        return loss, {
            "mse": mse_BT.mean(),
            "weighted_mse": loss,
            "mse_clean_level": jnp.sum(mse_BT * clean) / jnp.maximum(clean.sum(), 1),
            "mse_noise_level": jnp.sum(mse_BT * (tau_BT == 0)) / jnp.maximum((tau_BT == 0).sum(), 1),
        }

    # ------------------------------------------------------------------ generation

    def _context(self, z_BTNL, start, opts: SamplingOptions, key):
        """Past frames at window positions (rope: times) start.. noised to the context level, and that level per
        frame."""
        B, T = z_BTNL.shape[:2]
        eps_TBNL = jax.vmap(lambda p: context_eps(key, p, (B, *z_BTNL.shape[2:])))(start + jnp.arange(T))
        level = on_grid(jnp.float32(1.0 - opts.context_noise), self.cfg.noise_levels)  # a level training saw
        tau_BT = jnp.full(z_BTNL.shape[:2], level, jnp.float32)
        return noise(self._norm(z_BTNL), tau_BT, jnp.swapaxes(eps_TBNL, 0, 1)), tau_BT

    def prefill(self, z_BTNL, a_BTA, window: int, opts: SamplingOptions = SamplingOptions(), context_rng=None):
        """Caches of past frames, entered at the context level: each block's temporal K/V (one window), and
        the context key that ``next_frame`` noises the frames it writes with."""
        opts, key = self.resolve_sampling(opts), context_key(context_rng)
        z_ctx, tau_BT = self._context(z_BTNL, 0, opts, key)
        return {"kv": self.transformer.prefill(self.embed(z_ctx, tau_BT, a_BTA), window)[1], "context_key": key}

    def _step(self, z_BNL, tau, a_BA, caches, pos):
        B = z_BNL.shape[0]
        x = self.embed(z_BNL[:, None], jnp.full((B, 1), tau, jnp.float32), a_BA[:, None])
        out, kvs = self.transformer.step(x, caches, pos)
        return out[:, 0, 2:].astype(jnp.float32), kvs

    def draw_frame(self, caches, pos, a_BA, rng, opts: SamplingOptions, n: int):
        """Generate the frame at window position ``pos`` (K one-frame passes), the caches unchanged: (latents_BNL,
        caches). See :class:`jasmine.models.dynamics.CachedFrames`."""
        opts = self.resolve_sampling(opts)
        eps = jax.random.normal(rng, (a_BA.shape[0], n, self.latent_dim), jnp.float32)

        def predict(z, tau):  # x̂ in the MAE's range
            return self._clip(self._step(z, tau, a_BA, caches["kv"], pos)[0])

        return self._raw(denoise(predict, eps, opts.steps, self.cfg.noise_levels)), caches

    def commit_frame(self, caches, z_BNL, pos, a_BA, opts: SamplingOptions):
        """The caches with the frame written in at the context level (one more pass)."""
        opts, kv, key = self.resolve_sampling(opts), caches["kv"], caches["context_key"]
        z_ctx, tau_ctx = self._context(z_BNL[:, None], pos, opts, key)
        _, kvs = self._step(z_ctx[:, 0], tau_ctx[0, 0], a_BA, kv, pos)
        return {"kv": AxialTransformer.write_cache(kv, kvs, pos), "context_key": key}

    def frame(self, z_BWNL, a_BWA, pos, rng, opts: SamplingOptions, context_rng=None, t0=0, band=None):
        """Uncached: frame ``pos`` of the window, a full forward per step (the same draws as ``next_frame``);
        ``t0``, ``band``: see ``MaskGITDynamics.frame``."""
        opts = self.resolve_sampling(opts)
        B, W, n, _ = z_BWNL.shape
        ctx, tau_ctx = self._context(z_BWNL, t0, opts, context_key(context_rng))
        before = (jnp.arange(W) < pos)[None, :, None, None]

        def predict(z_BNL, tau):
            z_in = jnp.where(before, ctx, jax.lax.dynamic_update_index_in_dim(jnp.zeros_like(ctx), z_BNL, pos, 1))
            tau_BW = jnp.where(before[..., 0, 0], tau_ctx, tau)
            return self._clip(jnp.take(self(z_in, tau_BW, a_BWA, t0, band), pos, axis=1))

        eps = jax.random.normal(rng, (B, n, self.latent_dim), jnp.float32)
        return self._raw(denoise(predict, eps, opts.steps, self.cfg.noise_levels))
