"""Diffusion-forcing dynamics: levels, shapes, causality by gradients, the oracle sampler, cache, seeds, overfit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jasmine.models.diffusion import (DiffusionConfig, DiffusionDynamics, DiffusionSampling, denoise, noise,
                                      sample_levels)

CFG = DiffusionConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, noise_levels=8)
B, T, N, L, A = 2, 5, 6, 4, 3


def model():
    return DiffusionDynamics(CFG, L, A, rngs=nnx.Rngs(0))


def test_levels_cover_the_grid_with_both_ends():
    tau = np.asarray(sample_levels(jax.random.key(0), (5000, 4), 8))
    values, counts = np.unique(tau, return_counts=True)
    np.testing.assert_array_equal(values, np.arange(9) / 8)  # 0 (pure noise) through 1 (clean)
    assert counts.min() > 0.8 * tau.size / 9 and counts.max() < 1.2 * tau.size / 9
    assert (tau.std(axis=1) > 0).mean() > 0.9  # each frame of a window draws its own level


def test_shapes_and_loss():
    dyn = model()
    z = jnp.tanh(jax.random.normal(jax.random.key(0), (B, T, N, L)))
    a = jax.random.normal(jax.random.key(1), (B, T, A))
    assert dyn(z, jnp.ones((B, T)), a).shape == (B, T, N, L)
    loss, metrics = dyn.loss(z, a, jax.random.key(2))
    assert loss.shape == () and np.isfinite(float(loss)) and {"mse", "mse_clean_level"} <= set(metrics)
    with pytest.raises(ValueError, match="--model.noise-levels must be >= 1"):
        DiffusionDynamics(DiffusionConfig(noise_levels=0), L, A, rngs=nnx.Rngs(0))


def test_frame_t_sees_inputs_levels_and_actions_up_to_t_only():
    dyn = model()
    graphdef, state = nnx.split(dyn)
    z = jax.random.normal(jax.random.key(0), (1, T, N, L))
    tau = jnp.full((1, T), 0.5)
    a = jax.random.normal(jax.random.key(1), (1, T, A))
    out = lambda z, tau, a: nnx.merge(graphdef, state)(z, tau, a).sum(axis=(0, 2, 3))  # [T]
    jz, jtau, ja = jax.jit(jax.jacrev(out, argnums=(0, 1, 2)))(z, tau, a)  # [T, 1, T, ...]
    for t in range(T):
        for j in (jz, jtau, ja):
            assert np.all(np.asarray(j[t, :, t + 1 :]) == 0.0), f"frame {t} sees a later frame's input"
            assert np.abs(np.asarray(j[t, :, t])).sum() > 0
        assert np.abs(np.asarray(jz[t, :, 0])).sum() > 0  # and the first frame


@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_an_oracle_model_gets_its_clean_latents_back_along_the_training_path(steps):
    x = jnp.tanh(jax.random.normal(jax.random.key(0), (B, N, L)))
    eps = jax.random.normal(jax.random.key(1), (B, N, L))
    seen = []

    def oracle(z, tau):
        seen.append((np.asarray(z), tau))
        return x

    out = denoise(oracle, eps, steps)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert [tau for _, tau in seen] == [k / steps for k in range(steps)]
    for z, tau in seen:  # every input lies on the path training noises along, at exactly its level
        np.testing.assert_allclose(z, np.asarray(noise(x, tau, eps)), atol=1e-5)


def test_cache_gives_the_same_frames_and_seeds_decide_them():
    dyn = model()
    opts = DiffusionSampling(steps=4, context_noise=0.2)
    ctx = jnp.tanh(jax.random.normal(jax.random.key(0), (B, 2, N, L)))
    a = jax.random.normal(jax.random.key(1), (B, T, A))

    @jax.jit
    def cached(ctx, rng):
        caches = dyn.prefill(ctx, a[:, :2], T, opts)
        frames = [ctx[:, 0], ctx[:, 1]]
        for pos in range(2, T):
            z, caches = dyn.next_frame(caches, pos, a[:, pos], jax.random.fold_in(rng, pos), opts, N)
            frames.append(z)
        return jnp.stack(frames, 1)

    @jax.jit
    def uncached(ctx, rng):
        win = jnp.concatenate([ctx, jnp.zeros((B, T - 2, N, L))], 1)
        for pos in range(2, T):
            win = win.at[:, pos].set(dyn.frame(win, a, pos, jax.random.fold_in(rng, pos), opts))
        return win

    a1, b1 = cached(ctx, jax.random.key(3)), uncached(ctx, jax.random.key(3))
    np.testing.assert_allclose(np.asarray(a1), np.asarray(b1), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(a1[:, :2]), np.asarray(ctx))
    np.testing.assert_array_equal(np.asarray(cached(ctx, jax.random.key(3))), np.asarray(a1))
    assert not np.allclose(np.asarray(cached(ctx, jax.random.key(4))[:, 2:]), np.asarray(a1[:, 2:]))


def test_overfitting_one_batch_drives_the_loss_down():
    dyn = model()
    z = jnp.tanh(2 * jax.random.normal(jax.random.key(0), (B, T, N, L)))
    a = jax.random.normal(jax.random.key(1), (B, T, A))
    opt = nnx.Optimizer(dyn, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(dyn, opt, rng):
        loss, grads = nnx.value_and_grad(lambda m: m.loss(z, a, rng)[0])(dyn)
        opt.update(dyn, grads)
        return loss

    losses = [float(step(dyn, opt, jax.random.key(i % 4))) for i in range(300)]  # 4 fixed noise draws
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) / 10, (losses[:4], losses[-4:])


def test_bad_sampling_settings_are_named():
    for opts, why in [(DiffusionSampling(steps=0), "--steps must be >= 1 denoising step, got 0"),
                      (DiffusionSampling(steps=-2), "got -2"),
                      (DiffusionSampling(context_noise=1.0), r"--context-noise must be in \[0, 1\)")]:
        with pytest.raises(ValueError, match=why):
            opts.check()
