"""The MAE tokenizer: shapes, causality in time, the mask ratio's statistics, overfitting, resume."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_RUN, write_synthetic
from flax import nnx

from jasmine.config import MAETrainConfig, OptimConfig
from jasmine.models.mae import MAEConfig, MAETokenizer, mae_mask
from jasmine.train.components import COMPONENTS
from jasmine.train.logging import read_metrics
from jasmine.train.loop import train

MAE = COMPONENTS["mae"]
MODEL = MAEConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8)


def cfg(data=None, out=None, **kw):
    base = MAETrainConfig(
        data=data,
        out=out,
        model=MODEL,
        **SMALL_RUN,
    )
    return replace(base, **kw)


def test_shapes_and_the_tanh_bottleneck():
    model = MAETokenizer(MODEL, (16, 12, 3), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 12, 3))
    z = model.encode(x)
    assert z.shape == (2, 3, 12, 8) and z.dtype == jnp.float32 and float(jnp.abs(z).max()) < 1
    assert model.decode(z).shape == (2, 3, 16, 12, 3)
    recon, z2, mask = model(x, rng=jax.random.key(1))
    assert recon.shape == x.shape and mask.shape == (2, 3, 12) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(model(x)[1]), np.asarray(z))  # no rng: no masking, = encode
    assert not np.array_equal(np.asarray(z2), np.asarray(z))  # masked patches change the latents
    with pytest.raises(ValueError, match="--model.max-mask must be in \\[0, 1\\)"):
        MAETokenizer(replace(MODEL, max_mask=1.0), (16, 16, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="--model.patch-size 5 does not divide the 16x16 frames"):
        MAETokenizer(replace(MODEL, patch_size=5), (16, 16, 3), rngs=nnx.Rngs(0))


def test_latents_of_frame_t_depend_on_frames_up_to_t_only():
    model = MAETokenizer(MODEL, (8, 8, 3), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(0), (1, 4, 8, 8, 3))
    jac = jax.jit(jax.jacrev(lambda x: nnx.merge(graphdef, state).encode(x).sum(axis=(0, 2, 3))))(x)  # [T, B, T, ...]
    for t in range(4):
        assert np.all(np.asarray(jac[t, :, t + 1 :]) == 0.0), f"latents of frame {t} see a later frame"
        for s in range(t + 1):
            assert np.abs(np.asarray(jac[t, :, s])).sum() > 0, f"latents of frame {t} ignore frame {s}"


def test_each_frame_draws_its_own_mask_ratio_from_0_to_max_mask():
    mask = np.asarray(mae_mask(jax.random.key(0), (2000, 4, 256), 0.9))
    rate_BT = mask.mean(-1)
    assert abs(rate_BT.mean() - 0.45) < 0.01  # E[r] for r ~ U[0, 0.9]
    assert abs(rate_BT.std() - 0.9 / np.sqrt(12)) < 0.01  # the spread of U[0, 0.9] (binomial noise is ~0.02)
    assert np.percentile(rate_BT, 1) < 0.03 and np.percentile(rate_BT, 99) > 0.87 and rate_BT.max() < 0.99
    assert rate_BT.std(axis=1).mean() > 0.15  # frames of one clip differ (one ratio per clip would give ~0)
    assert not mae_mask(jax.random.key(0), (4, 4, 16), 0.0).any()


def test_overfitting_one_batch_drives_mse_down_10x():
    from jasmine.train.loop import setup
    from jasmine.train.mesh import global_batch, make_mesh

    c = cfg(
        steps=150,
        optim=OptimConfig(lr=3e-3, warmup_steps=10, decay_fraction=0.0),
        model=replace(MODEL, model_dim=64, ffn_dim=128, latent_dim=16),
    )
    mesh = make_mesh((1, 1))
    model, state, _, step_fn = setup(c, MAE, mesh)
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 2, (4, 4, 4, 4, 3), dtype=np.uint8) * 255).repeat(4, axis=2).repeat(4, axis=3)
    batch = global_batch({"frames": frames}, mesh)

    def full_mse(state):
        return float(MAE.evaluate(model.merge(state["params"], state["frozen"], state["rest"]), batch, None, c)["mse"])

    before = full_mse(state)
    for _ in range(c.steps):
        state, metrics = step_fn(state, batch)
    assert 0.2 < float(metrics["mask_rate"]) < 0.7  # trained on masked inputs ...
    assert full_mse(state) < before / 10, (before, full_mse(state))  # ... it reconstructs the unmasked batch


def test_resume_is_bitwise_exact(tmp_path):
    write_synthetic(tmp_path / "ds", lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    straight = train(cfg(tmp_path / "ds", tmp_path / "s"), MAE, progress=False)
    train(cfg(tmp_path / "ds", tmp_path / "r", steps=3), MAE, progress=False)
    resumed = train(cfg(tmp_path / "ds", tmp_path / "r", resume=True), MAE, progress=False)
    for key in ("params", "opt"):
        for a, b in zip(jax.tree.leaves(straight["state"][key]), jax.tree.leaves(resumed["state"][key]), strict=False):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["loss"] for r in read_metrics(tmp_path / "s")] == [r["loss"] for r in read_metrics(tmp_path / "r")]
    assert {"psnr", "ssim", "latent_abs"} <= set(read_metrics(tmp_path / "s", "val")[0])
