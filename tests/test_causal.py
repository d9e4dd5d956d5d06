"""The causal (autoregressive) dynamics: receptive field by gradients, token-level KV cache, sampling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_genie import dyn_cfg

from jasmine.models.causal import CausalDynamics
from jasmine.models.digits import Digits, SamplingOptions
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.nn import AxialTransformer, positions
from jasmine.sample.rollout import Rollout, SampleOptions
from jasmine.train.components import COMPONENTS

CFG = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2)
B, T, N, A = 1, 3, 4, 5
L = N + 1  # slots per frame: the action, then the N tokens


def allowed(t, k):
    """Slots [T, L] that token (t, k) may depend on: every slot of frames < t, the action and tokens < k of t."""
    ok = np.zeros((T, L), bool)
    ok[:t] = True
    ok[t, : k + 1] = True  # slot 0 is a_t, slot j >= 1 is token j - 1
    return ok


def dependence(logits_fn, x_BTLD):
    """[T, N, T, L]: whether logit (t, k) has a non-zero gradient with respect to input slot (t', j)."""
    jac = jax.jit(jax.jacrev(lambda x: logits_fn(x)[0, :, :N].sum(-1)))(x_BTLD)  # [T, N, B, T, L, D]
    return np.abs(np.asarray(jac[:, :, 0])).sum(-1) > 0


def violations(dep):
    return [(t, k) for t in range(T) for k in range(N) if not np.array_equal(dep[t, k], allowed(t, k))]


def test_receptive_field_is_exactly_earlier_frames_earlier_tokens_and_actions_up_to_t():
    dyn = CausalDynamics(CFG, Digits((6,)), A, rngs=nnx.Rngs(0))
    x_BTLD = jax.random.normal(jax.random.key(0), (B, T, L, CFG.model_dim))
    assert violations(dependence(lambda x: dyn.slot_logits(x.reshape(B, T * L, -1), N), x_BTLD)) == []
    # through the real inputs: the action into frame t reaches frame t's tokens and later frames' only
    ids = jax.random.randint(jax.random.key(1), (B, T, N), 0, 6)
    a_BTA = jax.random.normal(jax.random.key(2), (B, T, A))
    jac = jax.jit(jax.jacrev(lambda a: dyn(ids, a)[0].sum(axis=(1, 2))))(a_BTA)  # [T, B, T, A]
    for t in range(T):
        np.testing.assert_array_equal(np.abs(np.asarray(jac[t, 0])).sum(-1) > 0, np.arange(T) <= t)


def test_the_spatially_causal_axial_design_fails_the_same_check():
    """The reference's baseline: axial attention causal in space and time (token k sees tokens <= k of past frames)."""
    axial = AxialTransformer(
        CFG.model_dim,
        CFG.model_dim,
        CFG.ffn_dim,
        6,
        CFG.num_blocks,
        CFG.num_heads,
        spatial_causal=True,
        rngs=nnx.Rngs(0),
    )
    x_BTLD = jax.random.normal(jax.random.key(0), (B, T, L, CFG.model_dim))
    bad = violations(dependence(lambda x: axial(x)[:, :, :N], x_BTLD))
    assert (1, 0) in bad and (2, 1) in bad  # token 0 of frame 1 cannot see tokens 1.. of frame 0
    assert len(bad) >= (T - 1) * (N - 1)


def _genie(runs, **kw):
    cfg = COMPONENTS["dynamics"].prepare(
        dyn_cfg(runs / "data", None, runs / "tok", lam=runs / "lam", dynamics="causal", **kw)
    )
    return cfg, COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0), pretrained=False)


@pytest.mark.parametrize(
    "opts",
    [SamplingOptions(temperature=1.0), SamplingOptions(temperature=0.0), SamplingOptions(temperature=1.0, top_k=2)],
)
def test_cached_and_uncached_tokens_are_identical_also_past_seq_len(runs, opts):
    cfg, genie = _genie(runs)
    n = genie.tokens_per_frame
    ctx = jax.random.randint(jax.random.key(0), (2, 1, n), 0, genie.dynamics.digits.vocab)
    actions = jax.random.randint(jax.random.key(1), (2, 2 * cfg.seq_len), 0, 4)  # 2 * seq_len + 1 frames: slides
    out = {
        cache: Rollout(genie, cfg.seq_len, SampleOptions(**vars(opts), cache=cache)).run(
            ctx, actions, jax.random.key(2), num_frames=2 * cfg.seq_len
        )
        for cache in (True, False)
    }
    np.testing.assert_array_equal(out[True], out[False])
    np.testing.assert_array_equal(out[True][:, :1], ctx)


def test_rope_causal_rollouts_keep_a_ring_of_slots_past_the_window():
    """With rotary time positions the causal family's token cache is a ring of window frames' slots: past the
    window (4 frames, 2 blocks) its rollout equals the uncached banded window, and greedy tokens equal the
    argmax of one banded forward over the whole rolled-out sequence (chunk phase 2)."""
    from conftest import MICRO_LAM, MICRO_TOK

    from jasmine.models.genie import Genie

    cfg = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, time_positions="rope")
    g = Genie(MICRO_TOK, cfg, (16, 16, 3), lam_cfg=MICRO_LAM, family="causal", tokenizer_window=2, rngs=nnx.Rngs(0))
    W, F = 4, 9
    ctx = jax.random.randint(jax.random.key(0), (2, 2, g.tokens_per_frame), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (2, 1 + F), 0, 4)
    sampled = [
        np.asarray(Rollout(g, W, SampleOptions(cache=c)).run(ctx, acts, jax.random.key(2), num_frames=F))
        for c in (True, False)
    ]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    out = [np.asarray(Rollout(g, W, SampleOptions(temperature=0.0)).run(ctx, acts, jax.random.key(2), num_frames=F))]
    a_BTA, _ = g.frame_conditioning({"latent_actions": jnp.pad(acts, ((0, 0), (1, 0)))})
    logits = g.dynamics(jnp.asarray(out[0]), a_BTA, 0, W)
    np.testing.assert_array_equal(np.asarray(logits.argmax(-1))[:, W:], out[0][:, W:])  # greedy: the argmax
    ids, at0 = jnp.asarray(out[0][:, :W]), np.asarray(g.dynamics(jnp.asarray(out[0][:, :W]), a_BTA[:, :W]))
    np.testing.assert_allclose(np.asarray(g.dynamics(ids, a_BTA[:, :W], 6)), at0, atol=2e-5)  # relative + phase
    assert np.abs(np.asarray(g.dynamics(ids, a_BTA[:, :W], 7)) - at0).max() > 1e-2  # off the chunk grid
    x = jax.random.normal(jax.random.key(3), (1, 2, 32))
    scores = [
        np.asarray((q[:, 1] * k[:, 0]).sum(-1))
        for q, k, _ in (g.dynamics.blocks[0]._qkv(x, jnp.array(t)) for t in ([0, 1], [5, 6], [0, 3]))
    ]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)  # attention sees the distance between frames
    assert np.abs(scores[0] - scores[2]).max() > 1e-3


def test_sampling_is_seeded_and_top_k_restricts_each_digit():
    d = Digits((5, 4))
    logits = jax.random.normal(jax.random.key(0), (4000, d.width))
    draws = np.asarray(d.digits(d.sample(jax.random.key(1), logits, 1.0, top_k=2)))
    for k, (o, v) in enumerate(zip(d.offsets, d.levels, strict=False)):
        top2 = np.argsort(np.asarray(logits[:, o : o + v]), axis=-1)[:, -2:]
        assert (draws[:, k : k + 1] == top2).any(-1).all()
    assert len(np.unique(draws[:, 0])) == 5  # all values occur across rows, only the top 2 within each
    same = [d.sample(jax.random.key(s), logits, 1.0) for s in (3, 3, 4)]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], same[2])


def test_rollouts_are_deterministic_in_the_seed(runs):
    cfg, genie = _genie(runs)
    roll = Rollout(genie, cfg.seq_len, SampleOptions(temperature=1.0))
    ctx = jnp.zeros((2, 1, genie.tokens_per_frame), jnp.int32)
    acts = jnp.zeros((2, 3), jnp.int32)
    a, b, c = (roll.run(ctx, acts, jax.random.key(s), num_frames=3) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"model": DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, mask_limit=0.2)},
            "--model.mask-limit: MaskGIT-only",
        ),
        (
            {"model": DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, action_mode="add")},
            "--model.action-mode: MaskGIT-only",
        ),
        ({"val_sampling": SamplingOptions(steps=8)}, "--steps is a MaskGIT option"),
    ],
)
def test_maskgit_only_training_options_are_refused(runs, kw, match):
    with pytest.raises(ValueError, match=match):
        _genie(runs, **kw)


def test_maskgit_only_sampling_options_and_too_long_contexts_are_refused(runs):
    cfg, genie = _genie(runs)
    with pytest.raises(ValueError, match="--steps and --choice-temperature are MaskGIT option"):
        Rollout(genie, cfg.seq_len, SampleOptions(steps=25, choice_temperature=1.0))
    roll = Rollout(genie, cfg.seq_len, SampleOptions())
    ctx = jnp.zeros((1, cfg.seq_len, genie.tokens_per_frame), jnp.int32)
    with pytest.raises(ValueError, match="--context 4 must be between 1 and the model's seq_len - 1"):
        roll.run(ctx, jnp.zeros((1, cfg.seq_len), jnp.int32), jax.random.key(0), num_frames=1)


def test_slot_layout_puts_each_frames_action_before_its_tokens():
    dyn = CausalDynamics(CFG, Digits((6,)), A, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (B, T, N), 0, 6)
    a = jax.random.normal(jax.random.key(2), (B, T, A))
    x = dyn.slots(ids, a).reshape(B, T, L, -1) - positions(jnp.arange(T), L, CFG.model_dim)
    np.testing.assert_allclose(x[:, :, 0], dyn.action_proj(a), atol=1e-5)
    np.testing.assert_allclose(x[:, :, 1:], dyn.token_embed(ids), atol=1e-5)
