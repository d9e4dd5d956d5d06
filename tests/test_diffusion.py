"""Diffusion-forcing dynamics: levels, shapes, causality by gradients, the oracle sampler, cache, seeds, overfit."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jasmine.models.diffusion import DiffusionDynamics, LatentStat, denoise, noise, sample_levels
from jasmine.models.digits import SamplingOptions
from jasmine.models.dynamics import DynamicsConfig, frame_actions
from jasmine.models.genie import context_rng

CFG = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, noise_levels=8)
B, T, N, L, A = 2, 5, 6, 4, 3


def model(**kw):
    return DiffusionDynamics(replace(CFG, **kw), L, A, rngs=nnx.Rngs(0))


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
    loss, metrics = dyn.loss(z, a, jax.random.split(jax.random.key(2)))
    assert loss.shape == () and np.isfinite(float(loss)) and {"mse", "mse_clean_level"} <= set(metrics)
    with pytest.raises(ValueError, match="--model.noise-levels must be >= 1"):
        DiffusionDynamics(DynamicsConfig(noise_levels=0), L, A, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="--model.mask-limit: MaskGIT-only option"):
        DiffusionDynamics(DynamicsConfig(mask_limit=0.2), L, A, rngs=nnx.Rngs(0))


def test_frame_t_sees_inputs_levels_and_actions_up_to_t_only():
    dyn = model()
    graphdef, state = nnx.split(dyn)
    z = jax.random.normal(jax.random.key(0), (1, T, N, L))
    tau = jnp.full((1, T), 0.5)
    a = jax.random.normal(jax.random.key(1), (1, T, A))

    def out(z, tau, a):
        return nnx.merge(graphdef, state)(z, tau, a).sum(axis=(0, 2, 3))  # [T]

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

    def oracle(z, tau):  # records what each of the loop's K passes sees
        jax.debug.callback(lambda z, tau: seen.append((np.asarray(z), float(tau))), z, tau, ordered=True)
        return x

    out = denoise(oracle, eps, steps)
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert [tau for _, tau in seen] == [np.float32(k / steps) for k in range(steps)]
    for z, tau in seen:  # every input lies on the path training noises along, at exactly its level
        np.testing.assert_allclose(z, np.asarray(noise(x, tau, eps)), atol=1e-5)


def test_sampling_stays_on_the_training_grid_and_in_the_latent_range():
    """Steps that do not divide the grid and an off-grid context level are rounded to levels training drew; x̂ is
    clipped to the MAE's tanh range even when the network says otherwise."""
    x = jnp.full((B, N, L), 0.5)
    seen = []

    def oracle(z, tau):
        jax.debug.callback(lambda tau: seen.append(float(tau)), tau, ordered=True)
        return x

    denoise(oracle, jnp.zeros((B, N, L)), 10, levels=64)
    jax.effects_barrier()
    assert seen == [round(k / 10 * 64) / 64 for k in range(10)]
    with pytest.raises(ValueError, match="--steps 65 exceeds the 64 noise levels"):
        denoise(oracle, jnp.zeros((B, N, L)), 65, levels=64)
    dyn = model()
    _, tau = dyn._context(jnp.zeros((B, 3, N, L)), 0, SamplingOptions(context_noise=0.1), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(tau), 7 / 8)  # 0.9 = 7.2/8 was never trained on
    dyn.transformer.proj_out.kernel.value = dyn.transformer.proj_out.kernel.value * 1e4  # x̂ far outside (-1, 1)
    z = jax.random.normal(jax.random.key(0), (B, 4, N, L))
    a = jnp.zeros((B, 4, A))
    out = dyn.frame(z, a, 2, jax.random.key(1), SamplingOptions(steps=4))
    assert np.abs(np.asarray(out)).max() <= 1.0


def test_cache_gives_the_same_frames_and_seeds_decide_them():
    dyn = model()
    opts = SamplingOptions(steps=4, context_noise=0.2)
    ctx = jnp.tanh(jax.random.normal(jax.random.key(0), (B, 2, N, L)))
    a = jax.random.normal(jax.random.key(1), (B, T, A))

    @jax.jit
    def cached(ctx, rng):
        caches = dyn.prefill(ctx, a[:, :2], T, opts, context_rng(rng))
        frames = [ctx[:, 0], ctx[:, 1]]
        for pos in range(2, T):
            z, caches = dyn.next_frame(caches, pos, a[:, pos], jax.random.fold_in(rng, pos), opts, N)
            frames.append(z)
        return jnp.stack(frames, 1)

    @jax.jit
    def uncached(ctx, rng):
        win = jnp.concatenate([ctx, jnp.zeros((B, T - 2, N, L))], 1)
        for pos in range(2, T):
            win = win.at[:, pos].set(dyn.frame(win, a, pos, jax.random.fold_in(rng, pos), opts, context_rng(rng)))
        return win

    a1, b1 = cached(ctx, jax.random.key(3)), uncached(ctx, jax.random.key(3))
    np.testing.assert_allclose(np.asarray(a1), np.asarray(b1), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(a1[:, :2]), np.asarray(ctx))
    np.testing.assert_array_equal(np.asarray(cached(ctx, jax.random.key(3))), np.asarray(a1))
    assert not np.allclose(np.asarray(cached(ctx, jax.random.key(4))[:, 2:]), np.asarray(a1[:, 2:]))


def test_rope_diffusion_rollouts_keep_the_ring_cache_past_the_window():
    """With rotary time positions a diffusion rollout past its window (4 frames, 2 blocks) gives the same frames
    through the ring cache as uncached over the banded receptive window, context noise drawn by time."""
    from conftest import MICRO_LAM

    from jasmine.models.genie import Genie
    from jasmine.models.mae import MAEConfig
    from jasmine.sample.rollout import Rollout, SampleOptions

    mae = MAEConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=L)
    g = Genie(
        mae,
        replace(CFG, time_positions="rope"),
        (16, 16, 3),
        family="diffusion",
        lam_cfg=MICRO_LAM,
        tokenizer_window=2,
        rngs=nnx.Rngs(0),
    )
    ctx = jnp.tanh(jax.random.normal(jax.random.key(0), (B, 2, 16, L)))
    acts = jax.random.randint(jax.random.key(1), (B, 11), 0, 4)
    runs = [
        np.asarray(Rollout(g, 4, SampleOptions(steps=3, cache=c)).run(ctx, acts, jax.random.key(3), num_frames=10))
        for c in (True, False)
    ]
    np.testing.assert_allclose(runs[0], runs[1], atol=5e-5)
    assert np.abs(runs[0][:, 2:]).max() > 0.05


def test_context_noise_is_fresh_per_seed_and_clip():
    """Past frames are noised with a draw per clip from the rollout's context key: two identical clips in a
    batch, or one clip under two seeds, never share it (a shared draw makes eval's clips correlated and its
    bootstrap interval too narrow); one key gives one draw, so a seed still decides its frames."""
    dyn = model()
    opts = SamplingOptions(steps=4, context_noise=0.5)
    z = jnp.broadcast_to(jnp.tanh(jax.random.normal(jax.random.key(0), (1, T, N, L))), (B, T, N, L))
    a = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (1, T, A)), (B, T, A))
    k1, k2 = context_rng(jax.random.key(3)), context_rng(jax.random.key(4))
    noisy = np.asarray(dyn._context(z, 0, opts, k1)[0])
    assert not np.allclose(noisy[0], noisy[1])  # identical clips, different noise
    assert not np.allclose(noisy, np.asarray(dyn._context(z, 0, opts, k2)[0]))  # another seed, another draw
    np.testing.assert_array_equal(noisy, np.asarray(dyn._context(z, 0, opts, k1)[0]))

    def frame(ctx_key):  # the same frame key, so only the context noise can differ
        return np.asarray(dyn.frame(z, a, 3, jax.random.key(5), opts, ctx_key))

    same_eps = frame(k1)
    np.testing.assert_array_equal(frame(k1), same_eps)
    assert not np.allclose(frame(k2), same_eps)  # the frame depends on its context's draw


def test_latent_norm_tracks_the_clean_latents_and_samples_in_the_maes_range():
    """--model.latent-norm: training steps keep a bias-corrected running mean and std of the clean latents per
    channel (the loss never moves them: the train step tracks after its update); the noise path sees them
    normalised; samples come back in the MAE's range (clipped there, not in the normalised space)."""
    dyn = model(latent_norm=True)
    mean, std = dyn.latent_stats()
    np.testing.assert_array_equal(mean, 0.0)  # before any step
    np.testing.assert_array_equal(std, 1.0)
    shift, scale = jnp.array([0.5, -0.3, 0.0, 0.2]), jnp.array([0.05, 0.1, 0.3, 0.02])  # narrow tanh channels
    a = jax.random.normal(jax.random.key(1), (B, T, A))

    def batch(i):
        return shift + scale * jax.random.normal(jax.random.key(10 + i), (B, T, N, L))

    assert dyn.tracks_tokens and not model().tracks_tokens
    dyn.track(batch(0))
    first = batch(0).reshape(-1, L)
    np.testing.assert_allclose(dyn.latent_stats()[0], first.mean(0), atol=1e-5)  # bias-corrected: one batch
    np.testing.assert_allclose(dyn.latent_stats()[1], first.std(0), rtol=1e-3)
    for i in range(1, 40):
        dyn.track(batch(i))
    frozen = jax.tree.map(np.asarray, nnx.state(dyn, LatentStat))
    dyn.loss(batch(99) * 3, a, jax.random.split(jax.random.key(2)), training=True)  # the loss: no update
    assert jax.tree.all(jax.tree.map(np.array_equal, frozen, jax.tree.map(np.asarray, nnx.state(dyn, LatentStat))))
    mean, std = dyn.latent_stats()
    np.testing.assert_allclose(mean, shift, atol=0.01)
    np.testing.assert_allclose(std, scale, rtol=0.05)
    held_out = jnp.concatenate([batch(i) for i in range(50, 60)])
    np.testing.assert_allclose(dyn._norm(held_out).mean(axis=(0, 1, 2)), 0.0, atol=0.1)  # unit channels
    np.testing.assert_allclose(dyn._norm(held_out).std(axis=(0, 1, 2)), 1.0, rtol=0.1)
    np.testing.assert_allclose(dyn._raw(dyn._norm(batch(5))), batch(5), atol=1e-5)
    dyn.transformer.proj_out.kernel.value = dyn.transformer.proj_out.kernel.value * 1e4  # x̂ far outside
    out = np.asarray(dyn.frame(batch(0), a, 2, jax.random.key(1), SamplingOptions(steps=4)))
    assert np.abs(out).max() <= 1.0 + 1e-6 and np.abs(out).max() > 0.99  # clipped in the MAE's range
    assert not jax.tree.leaves(nnx.state(model(), LatentStat))  # without the option none (old runs load as before)


def test_latent_std_floor_keeps_a_dead_channel_from_being_amplified():
    """--model.latent-std-floor F: a channel's std is at least F x the median channel's; a constant (dead) channel
    then stays near 0 after normalising instead of being blown up to unit variance; the others are unchanged."""
    scale = jnp.array([0.2, 0.4, 0.3, 1e-4])  # channel 3 is dead
    z = scale * jax.random.normal(jax.random.key(3), (B, T, N, L))
    stds = {}
    for floor in (0.0, 0.5):
        dyn = model(latent_norm=True, latent_std_floor=floor)
        dyn.track(z)
        stds[floor] = np.asarray(dyn.latent_stats()[1])
    median = np.median(stds[0.0])
    np.testing.assert_allclose(stds[0.5][3], 0.5 * median, rtol=1e-5)
    np.testing.assert_array_equal(stds[0.5][:3], stds[0.0][:3])
    assert stds[0.0][3] < 2e-3  # without the floor the dead channel is divided by its own noise
    with pytest.raises(ValueError, match="latent-std-floor"):
        model(latent_norm=True, latent_std_floor=1.5)


def test_overfitting_one_batch_drives_the_loss_down():
    dyn = model()
    z = jnp.tanh(2 * jax.random.normal(jax.random.key(0), (B, T, N, L)))
    a = jax.random.normal(jax.random.key(1), (B, T, A))
    opt = nnx.Optimizer(dyn, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(dyn, opt, rng):
        loss, grads = nnx.value_and_grad(lambda m: m.loss(z, a, jax.random.split(rng))[0])(dyn)
        opt.update(dyn, grads)
        return loss

    losses = [float(step(dyn, opt, jax.random.key(i % 4))) for i in range(300)]  # 4 fixed noise draws
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) / 10, (losses[:4], losses[-4:])


def test_bad_sampling_settings_are_named():
    check = DiffusionDynamics.check_sampling
    for opts, why in [
        (SamplingOptions(steps=0), "--steps must be >= 1 denoising step, got 0"),
        (SamplingOptions(steps=-2), "got -2"),
        (SamplingOptions(context_noise=1.0), r"--context-noise must be in \[0, 1\)"),
        (SamplingOptions(temperature=0.0, top_k=3), "--temperature, --top-k: token sampling option"),
    ]:
        with pytest.raises(ValueError, match=why):
            check(opts)
    resolved = DiffusionDynamics.resolve_sampling(SamplingOptions())
    assert resolved.steps == 16 and resolved.context_noise == 0.1
    with pytest.raises(ValueError, match="--context-noise is a diffusion option"):
        SamplingOptions(context_noise=0.1).check(None, "maskgit", True)


@pytest.fixture(scope="session")
def mae_run(shared_root):
    from conftest import build_once, write_synthetic

    from jasmine.config import MAETrainConfig, OptimConfig
    from jasmine.models.mae import MAEConfig
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    def build(root):
        write_synthetic(root / "data", lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
        train(
            MAETrainConfig(
                data=root / "data",
                out=root / "mae",
                steps=2,
                batch_size=2,
                seq_len=2,
                image_size=(16, 16, 3),
                log_every=1,
                val_every=2,
                val_batches=1,
                ckpt_every=2,
                optim=OptimConfig(warmup_steps=1),
                model=MAEConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=4),
            ),
            COMPONENTS["mae"],
            progress=False,
        )

    return build_once(shared_root / "diffusion", "mae", build)


def dyn_cfg(root, out, **kw):
    from dataclasses import replace

    from jasmine.config import DynamicsTrainConfig, OptimConfig

    base = DynamicsTrainConfig(
        data=root / "data",
        out=out,
        tokenizer=root / "mae",
        gt_actions=True,
        dynamics="diffusion",
        model=CFG,
        steps=4,
        batch_size=2,
        seq_len=5,
        image_size=(16, 16, 3),
        log_every=1,
        val_every=4,
        val_batches=1,
        ckpt_every=2,
        val_sampling=SamplingOptions(steps=3),
        optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0),
    )
    return replace(base, **kw)


@pytest.mark.heavy
def test_diffusion_dynamics_trains_resumes_and_rolls_out_past_its_window(mae_run, tmp_path):
    from jasmine.sample.clips import load_genie
    from jasmine.sample.rollout import Rollout, SampleOptions
    from jasmine.train.components import COMPONENTS
    from jasmine.train.logging import read_metrics
    from jasmine.train.loop import train

    norm = {"model": replace(CFG, latent_norm=True)}  # the running latent statistics resume too
    straight = train(dyn_cfg(mae_run, tmp_path / "s", **norm), COMPONENTS["dynamics"], progress=False)
    train(dyn_cfg(mae_run, tmp_path / "r", steps=2, **norm), COMPONENTS["dynamics"], progress=False)
    resumed = train(dyn_cfg(mae_run, tmp_path / "r", resume=True, **norm), COMPONENTS["dynamics"], progress=False)
    for part in ("params", "rest"):
        for a, b in zip(jax.tree.leaves(straight["state"][part]), jax.tree.leaves(resumed["state"][part]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    val = read_metrics(tmp_path / "s", "val")[-1]
    assert {"rollout_psnr", "full_frame_psnr", "mse_clean_level"} <= set(val) and "full_frame_token_accuracy" not in val
    cfg, genie = load_genie(tmp_path / "s")
    assert genie.dynamics.family == "diffusion" and cfg.mae_model is not None
    mean, std = genie.dynamics.latent_stats()  # stored with the run: the MAE latents' running statistics
    assert np.abs(np.asarray(mean)).max() > 0 and not np.allclose(std, 1.0)
    frames = jax.random.randint(jax.random.key(0), (2, 1, 16, 16, 3), 0, 256).astype(jnp.uint8)
    acts = np.array([[1, 2, 3, 4, 5, 6, 0]] * 2) % 7  # 1 + 7 frames: past seq_len 5, the window slides
    out = {}
    for cache in (True, False):
        roll = Rollout(genie, cfg.seq_len, SampleOptions(steps=3, cache=cache))
        ctx = roll.encode(frames)
        assert ctx.shape == (2, 1, 16, 4) and ctx.dtype == jnp.float32  # MAE latents
        out[cache] = np.asarray(roll.run(ctx, acts, jax.random.key(1), num_frames=7))
    assert out[True].shape == (2, 8, 16, 4)
    np.testing.assert_allclose(out[True], out[False], atol=1e-4)
    # within one window, Genie.generate (the validation rollout) draws what Rollout draws for the same key:
    # frame noise by frame and context noise from the key's context stream, in both
    a_BTA = frame_actions(genie.action_vectors(jnp.asarray(acts[:, :4])))
    generate = nnx.jit(lambda g, ctx, a, key: g.generate(ctx, a, key, SampleOptions(steps=3)))
    gen = generate(genie, jnp.asarray(out[True][:, :1]), a_BTA, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(gen), out[True][:, :5], atol=1e-4)


def test_families_refuse_the_other_kind_of_tokenizer(mae_run, tmp_path):
    from dataclasses import replace

    from jasmine.config import OptimConfig, TokenizerTrainConfig
    from jasmine.models.tokenizer import TokenizerConfig
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    with pytest.raises(
        ValueError,
        match=r"--tokenizer .*mae: --dynamics maskgit needs a VQ/FSQ tokenizer run "
        r"\(`jasmine train tokenizer`\), got an MAE tokenizer",
    ):
        train(
            replace(
                dyn_cfg(mae_run, tmp_path / "m"),
                dynamics="maskgit",
                model=DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2),
                val_sampling=SamplingOptions(),
            ),
            COMPONENTS["dynamics"],
            progress=False,
        )
    train(
        TokenizerTrainConfig(
            data=mae_run / "data",
            out=tmp_path / "vq",
            steps=1,
            batch_size=2,
            seq_len=1,
            image_size=(16, 16, 3),
            log_every=1,
            val_every=1,
            val_batches=1,
            ckpt_every=1,
            optim=OptimConfig(warmup_steps=1),
            model=TokenizerConfig(
                patch_size=8, model_dim=16, ffn_dim=32, num_blocks=1, num_heads=2, latent_dim=4, num_latents=8
            ),
        ),
        COMPONENTS["tokenizer"],
        progress=False,
    )
    with pytest.raises(
        ValueError,
        match=r"--dynamics diffusion needs an MAE tokenizer run \(`jasmine train mae`\), "
        r"got a VQ/FSQ tokenizer",
    ):
        train(dyn_cfg(mae_run, tmp_path / "d", tokenizer=tmp_path / "vq"), COMPONENTS["dynamics"], progress=False)
    assert not (tmp_path / "d" / "checkpoints").exists()
