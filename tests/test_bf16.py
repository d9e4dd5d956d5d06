"""bf16 on CPU, the path GPUs take by default: every train step and the cached sampler, against fp32.

bf16 keeps 8 bits of mantissa, so nothing here is bitwise: the tolerances are a few bf16
ulps on the loss, and token agreement where sampling can flip a near-tie.
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_sample import LAM, TOK

from jasmine.bench import synthetic_batch
from jasmine.config import OptimConfig
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.genie import Genie
from jasmine.models.linear import Precision
from jasmine.presets import preset
from jasmine.sample.rollout import Rollout, SampleOptions
from jasmine.train.components import COMPONENTS
from jasmine.train.loop import setup
from jasmine.train.mesh import global_batch, make_mesh

RUNS = {  # component, config changes, batch inputs
    "tokenizer": ("tokenizer", {}, "frames"),
    "lam": ("lam", {}, "frames"),
    "maskgit": ("dynamics", {"gt_actions": True, "num_actions": 7}, "tokens"),
    "causal": ("dynamics", {"gt_actions": True, "num_actions": 7, "dynamics": "causal"}, "tokens"),
    "mae": ("mae", {}, "frames"),
    "diffusion": (
        "dynamics",
        {"gt_actions": True, "num_actions": 7, "dynamics": "diffusion", "mae_model": preset("mae", "micro").model},
        "frames",
    ),
}


def losses(name: str, dtype: str, steps: int) -> tuple[list[float], list[float], str]:
    component, kw, inputs = RUNS[name]
    comp = COMPONENTS[component]
    cfg = replace(
        preset(component, "micro"), dtype=dtype, optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0), **kw
    )
    mesh = make_mesh((1, 1))
    _, state, _, step = setup(cfg, comp, mesh, pretrained=False)
    batch = global_batch(synthetic_batch(cfg, comp.batch_keys(cfg), 7, inputs=inputs), mesh)
    hlo = step.lower(state, batch).as_text()
    out, norms = [], []
    for _ in range(steps):
        state, m = step(state, batch)
        out.append(float(m["loss"]))
        norms.append(float(m["grad_norm"]))
    return out, norms, hlo


@pytest.mark.parametrize("name", list(RUNS))
def test_bf16_train_step_matches_fp32_and_learns(name):
    f32, f32_norm, f32_hlo = losses(name, "float32", 1)
    bf16, bf16_norm, hlo = losses(name, "bfloat16", 30)
    assert "bf16" in hlo and "bf16" not in f32_hlo  # the bf16 step really computes in bf16
    assert bf16[0] != f32[0]
    np.testing.assert_allclose(bf16[0], f32[0], rtol=2e-2)  # a few bf16 ulps (2^-8) on a mean
    np.testing.assert_allclose(bf16_norm[0], f32_norm[0], rtol=5e-2)
    assert np.isfinite(bf16).all() and min(bf16[-5:]) < 0.8 * bf16[0], bf16  # and it overfits the batch


def genie(family: str, dtype):  # same seed, fp32 params either way: only the compute dtype differs
    dyn = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2)
    return Genie(TOK, dyn, (16, 16, 3), lam_cfg=LAM, family=family, prec=Precision(dtype), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("family", ["maskgit", "causal"])
def test_bf16_models_compute_their_logits_in_float32(family):
    """The output head runs in float32: logits from a bf16 matmul would all lie on bf16's 8-bit-mantissa grid
    (ties in the argmax and in MaskGIT's confidence ranking); here most of them do not."""
    dyn = genie(family, jnp.bfloat16).dynamics
    ids = jax.random.randint(jax.random.key(0), (2, 3, 16), 0, 16)
    a = jax.random.normal(jax.random.key(1), (2, 3, LAM.code_dim))
    logits = dyn(ids, jnp.zeros_like(ids, bool), a) if family == "maskgit" else dyn(ids, a)
    assert logits.dtype == jnp.float32 and logits.shape[:3] == (2, 3, 16)
    off_grid = np.asarray(logits != logits.astype(jnp.bfloat16).astype(jnp.float32))
    assert off_grid.mean() > 0.9, off_grid.mean()


@pytest.mark.parametrize("family", ["maskgit", "causal"])
def test_bf16_cached_sampler_agrees_with_uncached_and_fp32(family):
    g16, g32 = genie(family, jnp.bfloat16), genie(family, jnp.float32)
    ctx = jax.random.randint(jax.random.key(0), (2, 2, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (2, 9), 0, 4)
    zeros = jnp.zeros((2, 2, LAM.code_dim))
    assert "bf16" in str(jax.make_jaxpr(lambda c: g16.prefill(c, zeros, 5))(ctx))
    for temperature in (1.0, 0.0):
        opts = dict(temperature=temperature, **({"steps": 4} if family == "maskgit" else {}))

        def run(g, cache, opts=opts):
            return np.asarray(
                Rollout(g, 5, SampleOptions(cache=cache, **opts)).run(ctx, acts, jax.random.key(3), num_frames=8)
            )

        cached, uncached = run(g16, True), run(g16, False)  # 8 frames in a window of 5: the cache slides
        np.testing.assert_array_equal(cached[:, :2], ctx)
        assert (cached == uncached).mean() >= 0.95, (cached != uncached).sum()
        if temperature == 0.0:
            assert (cached == run(g32, True)).mean() >= 0.9


def test_bf16_matmuls_accumulate_in_float32_on_cpu_and_round_once():
    """XLA:CPU's bf16 x bf16 -> bf16 dot is ~5x slower than asking for a float32 result (docs/benchmarks.md): a bf16
    layer asks for float32 and rounds its output to bf16 once, after the bias."""
    from jasmine.models.linear import linear_layers

    lin = linear_layers(Precision(jnp.bfloat16, jnp.bfloat16), nnx.Rngs(0))(16, 8)
    lin.bias.value = jax.random.normal(jax.random.key(2), (8,), jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (3, 5, 16))
    (dot,) = [e for e in jax.make_jaxpr(lin)(x).eqns if e.primitive.name == "dot_general"]
    assert dot.params["preferred_element_type"] == jnp.float32
    y = lin(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 5, 8)
    f32 = jnp.float32
    want = (x.astype(jnp.bfloat16).astype(f32) @ lin.kernel.value.astype(f32) + lin.bias.value.astype(f32)).astype(
        jnp.bfloat16
    )
    np.testing.assert_allclose(np.asarray(y, f32), np.asarray(want, f32), rtol=2**-8)
    assert (y == want).mean() > 0.9  # one rounding: mostly the same bf16 value
    # one row (the causal sampler's one-token pass) runs as two: XLA:CPU's one-row bf16 product is ~8x slower
    (dot,) = [e for e in jax.make_jaxpr(lin)(x[:1, :1]).eqns if e.primitive.name == "dot_general"]
    assert dot.invars[0].aval.shape == (2, 16)
    np.testing.assert_array_equal(np.asarray(lin(x[:1, :1]), f32), np.asarray(y[:1, :1], f32))


def test_sampling_stores_cpu_bf16_kernels_out_in_in_a_copy_with_the_same_values(monkeypatch):
    """On XLA:CPU a bf16 product over a pass's few rows runs faster against an [out, in] kernel (docs/benchmarks.md):
    sampling's copy stores them so, the model itself keeps nnx's [in, out], and outputs and rollouts are unchanged;
    float32 models are used as they are."""
    from jasmine.models.linear import Linear, serving_layout

    g16 = genie("maskgit", jnp.bfloat16)
    for i, (_, m) in enumerate(nnx.iter_graph(g16)):  # biases too (an untrained model's are 0)
        if isinstance(m, Linear):
            m.bias.value = 0.1 * jax.random.normal(jax.random.key(i), m.bias.value.shape, m.bias.value.dtype)
    served = serving_layout(g16)
    layers = [{p: m for p, m in nnx.iter_graph(g) if isinstance(m, Linear)} for g in (g16, served)]
    assert layers[0].keys() == layers[1].keys()
    pairs = [(a, layers[1][p]) for p, a in layers[0].items()]
    flipped = [(a, b) for a, b in pairs if b.out_in]
    assert flipped and all(a.preferred_element_type == jnp.float32 for a, _ in flipped)
    for a, b in pairs:
        assert not a.out_in and a.kernel.value.shape == (a.in_features, a.out_features)
        np.testing.assert_array_equal(np.asarray(b.kernel.value.T if b.out_in else b.kernel.value, np.float32),
                                      np.asarray(a.kernel.value, np.float32))  # fmt: skip
    a, b = flipped[0]
    x = jax.random.normal(jax.random.key(1), (3, 17, a.in_features))
    (dot,) = [e for e in jax.make_jaxpr(b)(x).eqns if e.primitive.name == "dot_general"]
    assert dot.invars[1].aval.shape == (a.out_features, a.in_features)
    np.testing.assert_array_equal(np.asarray(b(x), np.float32), np.asarray(a(x), np.float32))
    np.testing.assert_array_equal(np.asarray(b(x[:1, :1]), np.float32), np.asarray(a(x[:1, :1]), np.float32))
    ctx = jax.random.randint(jax.random.key(0), (2, 2, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (2, 7), 0, 4)
    roll = Rollout(g16, 5, SampleOptions(steps=4, temperature=0.0))
    assert any(m.out_in for _, m in nnx.iter_graph(nnx.merge(roll.graphdef, roll.state)) if isinstance(m, Linear))
    from jasmine.sample import rollout

    monkeypatch.setattr(rollout, "serving_layout", lambda g: g)
    want = Rollout(g16, 5, SampleOptions(steps=4, temperature=0.0))  # the same rollout on nnx's layout
    assert not any(m.out_in for _, m in nnx.iter_graph(nnx.merge(want.graphdef, want.state)) if isinstance(m, Linear))
    np.testing.assert_array_equal(
        np.asarray(roll.run(ctx, acts, jax.random.key(3), num_frames=6)),
        np.asarray(want.run(ctx, acts, jax.random.key(3), num_frames=6)),
    )
    g32 = genie("maskgit", jnp.float32)
    assert serving_layout(g32) is g32
