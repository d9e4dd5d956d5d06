from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasmine.models.attention import attention_implementation, dot_product_attention
from jasmine.models.linear import Linear
from jasmine.models.nn import AxialTransformer
from jasmine.models.quantize import VectorQuantizer
from jasmine.models.tokenizer import Tokenizer, TokenizerConfig, patchify, unpatchify

TINY = TokenizerConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, latent_dim=8, num_latents=16)


def test_tokenizer_shapes_and_round_trip_api():
    model = Tokenizer(TINY, (16, 12, 3), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 5, 16, 12, 3))
    recon, ids, aux = nnx.jit(lambda m, x: m(x))(model, x)
    assert recon.shape == x.shape and recon.dtype == jnp.float32
    assert ids.shape == (2, 5, 12) and 0 <= ids.min() and ids.max() < 16
    assert float(recon.min()) >= 0 and float(recon.max()) <= 1
    ids2 = nnx.jit(lambda m, x: m.encode(x))(model, x)
    assert ids2.dtype == jnp.int32 and ids2.shape == (2, 5, 12)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(nnx.jit(lambda m, i: m.decode(i))(model, ids2), recon, atol=1e-6)
    assert aux["code_counts"].sum() == 2 * 5 * 12


def test_linear_flattening_matches_nnx_linear_values_and_gradients():
    """Linear is nnx.Linear with its leading axes flattened: same parameters, outputs and gradients."""
    ours, ref = Linear(6, 5, rngs=nnx.Rngs(0)), nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    x_BTNI = jax.random.normal(jax.random.key(1), (2, 3, 4, 6))
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(ref))
    y = ours(x_BTNI)
    assert y.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(y, ref(x_BTNI), rtol=1e-6, atol=1e-6)

    def loss(m, x):
        return jnp.sum(jnp.sin(m(x)))

    g_ours, g_ref = nnx.grad(loss)(ours, x_BTNI), nnx.grad(loss)(ref, x_BTNI)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), nnx.state(g_ours), nnx.state(g_ref)
    )


def test_patchify_inverts():
    x = jnp.arange(2 * 3 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 3, 8, 8, 3)
    p = patchify(x, 4)
    assert p.shape == (2, 3, 4, 48)
    np.testing.assert_array_equal(unpatchify(p, 4, 8, 8), x)


def test_patch_size_must_divide_frames():
    with pytest.raises(ValueError, match="patch-size 5 does not divide the 16x16 frames"):
        Tokenizer(TokenizerConfig(patch_size=5), (16, 16, 3), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("remat", ["none", "full", "dots", "offload"])
def test_temporal_causality_by_gradient(remat):
    """Output at time t has exactly zero gradient w.r.t. inputs at t' > t, and nonzero for t' <= t."""
    model = AxialTransformer(6, 16, 32, 4, 2, 2, remat=remat, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 5, 3, 6))
    jac = jax.jit(jax.jacrev(lambda x: model(x).sum(axis=(0, 2, 3))))(x)  # [T_out, B, T_in, N, I]
    for t in range(5):
        g = jac[t]
        assert np.all(np.asarray(g[:, t + 1 :]) == 0.0), f"output {t} depends on the future"
        assert np.all(np.abs(np.asarray(g[:, : t + 1])).sum(axis=(0, 2, 3)) > 0), f"output {t} ignores its past"


def test_rope_band_gives_each_frame_a_receptive_field_of_blocks_times_band_frames():
    """With rotary time positions and an attention band of 3 frames, two blocks reach back 2 * (3 - 1) frames:
    output t has nonzero gradient exactly w.r.t. inputs t - 4 .. t (causal, and nothing older)."""
    model = AxialTransformer(6, 16, 32, 4, 2, 2, time_positions="rope", rngs=nnx.Rngs(0))
    assert model.receptive_frames(3) == 5
    x = jax.random.normal(jax.random.key(1), (1, 9, 3, 6))
    jac = jax.jit(jax.jacrev(lambda x: model(x, 0, 3).sum(axis=(0, 2, 3))))(x)  # [T_out, B, T_in, N, I]
    for t in range(9):
        reach = np.abs(np.asarray(jac[t])).sum(axis=(0, 2, 3)) > 0
        np.testing.assert_array_equal(reach, (np.arange(9) <= t) & (np.arange(9) >= t - 4), err_msg=f"output {t}")


def test_rope_outputs_depend_on_time_differences_and_the_chunk_phase_only():
    """A rope model's outputs are the same for a clip placed at time 0 or at any multiple of its phase (scores see
    t - s, the input sees t mod phase), and differ one frame off the phase grid; absolute models refuse a
    time offset or a band (their positions are the window's)."""
    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 6))
    model = AxialTransformer(6, 16, 32, 4, 2, 2, time_positions="rope", phase=2, rngs=nnx.Rngs(0))
    at0 = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(model(x, 6)), at0, atol=2e-5)
    np.testing.assert_allclose(np.asarray(model(x, 1000)), at0, atol=2e-4)
    assert np.abs(np.asarray(model(x, 7)) - at0).max() > 1e-2  # off the chunk grid
    absolute = AxialTransformer(6, 16, 32, 4, 2, 2, rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(absolute(x[:, 1:])) - np.asarray(absolute(x))[:, 1:]).max() > 1e-2
    for kw in ({"t_offset": 2}, {"band": 3}):
        with pytest.raises(ValueError, match="absolute time positions"):
            absolute(x, **kw)
    with pytest.raises(ValueError, match="even head width"):
        AxialTransformer(6, 18, 32, 4, 2, 2, time_positions="rope", rngs=nnx.Rngs(0))
    from jasmine.models.nn import rotary

    q, k = jax.random.normal(jax.random.key(2), (2, 1, 1, 1, 8))

    def score(t, s):
        return float((rotary(q, jnp.array([t])) * rotary(k, jnp.array([s]))).sum())

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5) == pytest.approx(score(503, 501), abs=1e-4)
    assert abs(score(3, 1) - score(3, 2)) > 1e-2  # the distance is seen


def test_remat_keeps_the_loss_and_every_parameter_gradient():
    """Recomputing activations in the backward pass must not change what is learned: same loss, same gradient
    for every parameter (not only for the inputs)."""
    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 6))

    def loss_and_grads(remat):
        model = AxialTransformer(6, 16, 32, 4, 2, 2, remat=remat, rngs=nnx.Rngs(0))
        return nnx.jit(nnx.value_and_grad(lambda m: (m(x) ** 2).mean()))(model)

    ref_loss, ref = loss_and_grads("none")
    ref_leaves = jax.tree.leaves(nnx.state(ref))
    assert len(ref_leaves) > 10 and all(np.abs(np.asarray(g)).sum() > 0 for g in ref_leaves)
    for remat in ("full", "dots", "offload"):
        loss, grads = loss_and_grads(remat)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for g, r in zip(jax.tree.leaves(nnx.state(grads)), ref_leaves, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)


def test_remat_offload_moves_saved_matmul_outputs_to_host_memory():
    """--remat offload keeps the forward's matmul outputs in pinned host memory for the backward pass (a copy
    to the host per saved matmul); dots keeps them on the device, full keeps none."""
    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 6))

    def host_copies(remat):
        model = AxialTransformer(6, 16, 32, 4, 2, 2, remat=remat, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: (nnx.merge(graphdef, s)(x) ** 2).mean()))(state)
        return str(jaxpr).count("MemorySpace.Host")

    assert host_copies("dots") == host_copies("full") == 0
    assert host_copies("offload") >= 2 * 4  # 2 blocks x at least 4 of their projections


def test_spatial_causal_flag_by_gradient():
    model = AxialTransformer(6, 16, 32, 4, 2, 2, spatial_causal=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 3, 4, 6))
    g = jax.jit(jax.grad(lambda x: model(x)[:, 2, 1].sum()))(x)
    assert np.all(np.asarray(g[:, :, 2:]) == 0.0) and np.all(np.asarray(g[:, 3:]) == 0.0)
    assert np.abs(np.asarray(g[:, :3, :2])).sum() > 0


def test_attention_mask_is_honoured():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 4, 2, 8)) for i in range(3))
    mask = jnp.ones((2, 2, 4, 4), bool).at[:, :, :, 3].set(False)  # nobody may attend to key 3
    g = jax.grad(lambda v: dot_product_attention(q, k, v, causal=False, mask_SHLM=mask).sum())(v)
    assert np.all(np.asarray(g[:, 3]) == 0.0) and np.abs(np.asarray(g[:, :3])).sum() > 0
    unmasked = dot_product_attention(q, k, v, causal=False)
    assert not np.allclose(unmasked, dot_product_attention(q, k, v, causal=False, mask_SHLM=mask))


@pytest.mark.parametrize(
    "L, M, causal", [(17, 17, True), (17, 17, False), (17, 16, False), (1, 17, False), (16, 17, False)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_even_length_attention_equals_attention(L, M, causal, masked):
    """cuDNN trains on even lengths only: the padded path (run here through XLA) must equal plain attention."""
    from jasmine.models.attention import even_length_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (3, n, 2, 8)) for i, n in enumerate((L, M, M)))
    mask = jax.random.bernoulli(jax.random.key(5), 0.6, (3, 1, L, M)).at[..., 0].set(True) if masked else None
    want = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")
    got = even_length_attention(q, k, v, causal=causal, mask_SHLM=mask, implementation="xla")
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("t", [0, 3, 4, 6, 9])  # a window of 5 slots: filling, full, wrapped around
def test_one_query_over_a_ring_cache_and_itself_equals_writing_itself_in_and_attending(t, W=5):
    """The sampling pass's attention: the cache read in place (laid out [S, H, W, K]) and the query's own (k, v)
    apart, against writing the own (k, v) into its ring slot t mod W and attending to every written slot."""
    from jasmine.models.attention import attend_cache_and_self, ring_visible

    q, k, v = (jax.random.normal(jax.random.key(i), (3, 1, 2, 8)) for i in range(3))
    k_c, v_c = (jax.random.normal(jax.random.key(i), (3, W, 2, 8)) for i in (3, 4))  # unwritten slots: noise
    slot = t % W
    want = jax.nn.dot_product_attention(
        q,
        k_c.at[:, slot].set(k[:, 0]),
        v_c.at[:, slot].set(v[:, 0]),
        mask=(jnp.arange(W) <= t)[None, None, None],
    )
    got = attend_cache_and_self(q, k, v, jnp.swapaxes(k_c, 1, 2), jnp.swapaxes(v_c, 1, 2), ring_visible(t, W))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_attention_backend_choice_on_cpu():
    assert attention_implementation("auto", jnp.bfloat16, 64) == "xla"  # no GPU here
    assert attention_implementation("cudnn", jnp.float32, 64) == "cudnn"  # explicit request is kept


def test_vq_straight_through_gradient_is_identity_on_normalised_input():
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (6, 4))
    w = jax.random.normal(jax.random.key(3), (6, 4))
    g_vq = jax.grad(lambda x: (vq(x)[0] * w).sum())(x)
    g_id = jax.grad(lambda x: ((x / jnp.linalg.norm(x, axis=-1, keepdims=True)) * w).sum())(x)
    np.testing.assert_allclose(g_vq, g_id, rtol=1e-5, atol=1e-6)
    z_q, ids, _ = vq(x)
    np.testing.assert_allclose(z_q, vq.lookup(ids), atol=1e-6)  # forward value is the code


def test_vq_losses_train_the_right_side():
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (6, 4))
    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)

    def loss(params, x, key):
        return nnx.merge(graphdef, params, rest)(x)[2][key]

    assert float(jnp.abs(jax.grad(loss)(params, x, "codebook_loss")["codebook"][...]).sum()) > 0
    assert float(jnp.abs(jax.grad(loss, argnums=1)(params, x, "codebook_loss")).sum()) == 0
    assert float(jnp.abs(jax.grad(loss)(params, x, "commitment_loss")["codebook"][...]).sum()) == 0
    assert float(jnp.abs(jax.grad(loss, argnums=1)(params, x, "commitment_loss")).sum()) > 0


def test_codebook_dropout_changes_choices_only_in_training():
    vq = VectorQuantizer(16, 4, dropout=0.5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (64, 4))
    _, ids_eval, _ = vq(x)
    _, ids_eval2, _ = vq(x)
    _, ids_train, _ = vq(x, rng=jax.random.key(5))
    np.testing.assert_array_equal(ids_eval, ids_eval2)
    assert (ids_train != ids_eval).any()


def test_dead_codes_are_reset_from_used_codes():
    vq = VectorQuantizer(4, 3, rngs=nnx.Rngs(0))
    before = np.asarray(vq.codebook[...])
    counts = jnp.array([5, 0, 3, 0])
    assert int(vq.reset_dead_codes(counts, jax.random.key(0), after_steps=2)) == 0
    assert int(vq.reset_dead_codes(counts, jax.random.key(1), after_steps=2)) == 2
    after = np.asarray(vq.codebook[...])
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    for dead in (1, 3):  # now near a copy of code 0 or 2
        assert min(np.abs(after[dead] - before[src]).max() for src in (0, 2)) < 0.1
    np.testing.assert_array_equal(np.asarray(vq.age[...]), [0, 0, 0, 0])


def test_dead_codes_restart_at_the_worst_fitted_inputs():
    vq = VectorQuantizer(4, 3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (32, 3))
    _, _, aux = vq(x)
    counts = jnp.array([5, 0, 3, 0])
    vq.reset_dead_codes(counts, jax.random.key(0), after_steps=1, inputs_XL=aux["inputs"], sims_X=aux["best_sim"])
    worst = np.asarray(aux["inputs"])[np.argsort(np.asarray(aux["best_sim"]))[:4]]  # the 4 worst-fitted inputs
    new = np.asarray(vq.codebook[...])[[1, 3]]
    dist = np.abs(new[:, None] - worst[None]).max(-1)  # [dead code, candidate]
    assert (dist.min(1) < 1e-6).all() and dist.argmin(1)[0] != dist.argmin(1)[1]  # distinct worst-fitted inputs


def test_time_and_space_have_separate_position_tables():
    from jasmine.models.nn import positions

    pe = np.asarray(positions(jnp.arange(5), 5, 16))  # [T, N, D]
    for t, n in [(1, 2), (0, 3), (4, 1)]:
        assert not np.allclose(pe[t, n], pe[n, t]), (t, n)  # a shared table would make (t, n) and (n, t) equal
    assert len({tuple(np.round(pe[t, n], 6)) for t in range(5) for n in range(5)}) == 25
    np.testing.assert_allclose(positions(jnp.arange(2, 4), 5, 16), pe[2:4], atol=1e-6)  # offsets (cached steps)


def test_fsq_ids_round_trip_and_straight_through_gradient():
    from jasmine.models.quantize import FiniteScalarQuantizer

    q = FiniteScalarQuantizer((8, 5, 5, 3))
    x = 3 * jax.random.normal(jax.random.key(0), (4000, 4))
    z, ids, aux = q(x)
    assert q.num_codes == 600 and ids.dtype == jnp.int32 and 0 <= ids.min() and ids.max() < 600
    assert len(np.unique(np.asarray(ids))) > 300 and int(aux["code_counts"].sum()) == 4000
    np.testing.assert_allclose(q.lookup(ids), z, atol=1e-6)  # ids and quantized latents agree
    g = jax.grad(lambda x: (q(x)[0] * jnp.arange(4.0)).sum())(x / 6)  # where tanh is not saturated
    assert np.all(np.asarray(g[:, 1:]) > 0) and np.all(np.asarray(g[:, 0]) == 0)  # through the rounding


def test_fsq_tokenizer_shapes():
    cfg = TokenizerConfig(**{**TINY.__dict__, "quantizer": "fsq", "fsq_levels": (4, 4, 4)})
    model = Tokenizer(cfg, (16, 12, 3), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 12, 3))
    recon, ids, aux = model(x)
    assert recon.shape == x.shape and ids.shape == (2, 3, 12) and cfg.vocab_size == 64 and cfg.code_dim == 3
    np.testing.assert_allclose(model.decode(model.encode(x)), recon, atol=1e-5)
    assert float(aux["codebook_loss"]) == 0.0


def test_a_short_last_chunk_encodes_and_decodes_as_if_padded_at_its_cost(window=3):  # 5 frames: a chunk + 2
    """The tokenizer is causal in time, so the clip's last, shorter chunk runs unpadded: the same tokens and
    frames as zero-padding it to a whole window, with only the clip's frames computed."""
    from jasmine.models.genie import in_chunks

    tok = Tokenizer(TokenizerConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8,
                                    num_latents=16), (16, 16, 3), rngs=nnx.Rngs(0))  # fmt: skip
    x = jax.random.uniform(jax.random.key(0), (2, 5, 16, 16, 3))
    seen = []

    def encode(x_BT):
        seen.append(x_BT.shape[:2])
        return tok.encode(x_BT)

    ids = in_chunks(encode, x, window)
    padded = jnp.pad(x, [(0, 0), (0, -(-5 // window) * window - 5), (0, 0), (0, 0), (0, 0)])
    ref = tok.encode(padded.reshape(-1, window, 16, 16, 3)).reshape(2, -1, *ids.shape[2:])[:, :5]
    np.testing.assert_array_equal(ids, ref)
    assert sum(b * t for b, t in seen) == 2 * 5  # every frame once, no padding
    frames = in_chunks(tok.decode, ids, window)
    ids_padded = jnp.pad(ids, [(0, 0), (0, -(-5 // window) * window - 5), (0, 0)])
    ref = tok.decode(ids_padded.reshape(-1, window, ids.shape[2])).reshape(2, -1, 16, 16, 3)[:, :5]
    np.testing.assert_allclose(frames, ref, atol=1e-5)

    # `jasmine bench train dynamics` times both ways in one process (the padded one as steps ran before)
    from jasmine.bench.train import encoder_padding

    class Frozen(nnx.Module):  # what the bench reads of a Genie: its tokenizer window and encode
        def __init__(self):
            self.tok, self.tokenizer_window = tok, window

        def encode(self, frames):
            return in_chunks(self.tok.encode, frames.astype(jnp.float32) / 255.0, self.tokenizer_window)

    genie = Frozen()
    frames_u8 = (x * 255).astype(jnp.uint8)
    r = encoder_padding(genie, frames_u8, step_s=1.0, repeats=1)
    assert (r["frames"], r["window"], r["padded_frames"]) == (5, window, 6)
    assert r["encode_s"] > 0 and r["padded_encode_s"] > 0
    assert r["padded_step_s"] == 1.0 + r["padded_encode_s"] - r["encode_s"]
    assert encoder_padding(genie, frames_u8[:, :window], step_s=1.0) == {}  # a clip that tiles: nothing to time


def test_space_rope_sees_where_patches_are_relative_to_each_other_never_where_they_are():
    """2D rotary space positions: scores depend on the (row, col) offset only; a frame of identical patches gives
    the same output everywhere (absolute codes make them differ); the patches left and right of a lone bright
    one differ (the direction is seen), and a head width not divisible by 4 is refused."""
    from jasmine.models.nn import rotary2d

    grid = (3, 4)
    q, k = jax.random.normal(jax.random.key(2), (2, 1, 1, 1, 8))
    qN, kN = (rotary2d(jnp.broadcast_to(a, (1, 12, 1, 8)), grid)[0, :, 0] for a in (q, k))
    S = np.asarray(qN @ kN.T)  # S[i, j]: patch i's query on patch j's key; i = row * 4 + col
    assert S[0 * 4 + 0, 1 * 4 + 2] == pytest.approx(S[1 * 4 + 1, 2 * 4 + 3], abs=1e-5)  # offset (+1, +2)
    assert S[2 * 4 + 3, 1 * 4 + 1] == pytest.approx(S[1 * 4 + 2, 0 * 4 + 0], abs=1e-5)  # offset (-1, -2)
    assert abs(S[0, 1] - S[0, 4]) > 1e-2 and abs(S[0, 1] - S[1, 0]) > 1e-2  # rows and columns told apart
    model = AxialTransformer(6, 16, 32, 4, 2, 2, space_positions="rope", grid=grid, rngs=nnx.Rngs(0))
    uniform = jnp.broadcast_to(jax.random.normal(jax.random.key(3), (6,)), (1, 2, 12, 6))
    out = np.asarray(model(uniform))
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :, :1], out.shape), atol=1e-5)
    absolute = AxialTransformer(6, 16, 32, 4, 2, 2, rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(absolute(uniform)) - np.asarray(absolute(uniform))[:, :, :1]).max() > 1e-2
    lone = jnp.zeros((1, 2, 12, 6)).at[:, :, 1 * 4 + 1].set(3.0)
    out = np.asarray(model(lone))
    assert np.abs(out[:, :, 1 * 4 + 0] - out[:, :, 1 * 4 + 2]).max() > 1e-3  # left and right neighbours differ
    # the spatial attention rotates queries and keys alike: equal to attention over the rotated q and k
    mha = model.blocks[0].spatial
    h = jax.random.normal(jax.random.key(4), (2, 12, 16))
    q, k, v = mha.qkv_heads(h)
    rot = partial(rotary2d, grid=grid)
    want = mha.out(jax.nn.dot_product_attention(rot(q), rot(k), v).reshape(2, 12, 16))
    np.testing.assert_allclose(np.asarray(mha(h, causal=False, rotate=rot)), np.asarray(want), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        AxialTransformer(6, 12, 32, 4, 2, 2, space_positions="rope", grid=grid, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", ["tokenizer", "mae"])
def test_decoding_a_chunk_a_frame_at_a_time_from_cached_keys_gives_the_whole_chunks_frames(kind, window=4):
    """Play decodes frame t from the decoder's K/V of its chunk's frames before t (one frame's cost), never the
    chunk again: each frame as decoding the chunk gives it, across a chunk boundary, and from a mid-chunk start."""
    from jasmine.models.genie import in_chunks
    from jasmine.models.mae import MAEConfig, MAETokenizer

    if kind == "tokenizer":
        tok = Tokenizer(TINY, (16, 16, 3), rngs=nnx.Rngs(0))
        x = jax.random.randint(jax.random.key(1), (2, 7, 16), 0, TINY.vocab_size)
    else:
        tok = MAETokenizer(MAEConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, latent_dim=8),
                           (16, 16, 3), rngs=nnx.Rngs(0))  # fmt: skip
        x = jnp.tanh(jax.random.normal(jax.random.key(1), (2, 7, 16, 8)))
    want = np.asarray(in_chunks(tok.decode, x, window))  # [2, 7, 16, 16, 3], chunks of 4 frames + 3
    caches = None
    for t in range(7):
        p = t % window
        if p == 0:
            frame, caches = tok.decode_start(x[:, t : t + 1], window)
        else:
            frame, caches = tok.decode_next(x[:, t : t + 1], caches, p)
        np.testing.assert_allclose(frame[:, 0], want[:, t], atol=1e-5, err_msg=f"frame {t}")
    frames, caches = tok.decode_start(x[:, 4:6], window)  # a stream joined mid-chunk: frames 4, 5 at once
    np.testing.assert_allclose(frames, want[:, 4:6], atol=1e-5)
    np.testing.assert_allclose(tok.decode_next(x[:, 6:7], caches, 2)[0][:, 0], want[:, 6], atol=1e-5)
