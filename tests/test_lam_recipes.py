"""LAM recipe options that keep places out of the codes: position-free encoders, rotary decoders, the state
adversary (gradient routing, and its errors), and the decoder's own roll."""

from dataclasses import replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MICRO_LAM
from flax import nnx

from jasmine.config import IDMTrainConfig, LAMTrainConfig
from jasmine.models.lam import InverseDynamicsModel, LatentActionModel
from jasmine.models.tokenizer import patchify, unpatchify
from jasmine.train.components import COMPONENTS

LAM_MODEL = MICRO_LAM


def test_lam_position_options_keep_places_out_of_the_codes():
    """``encoder_positions="none"``: the encoder's features are a bag of local changes, the same when the frame's
    patches are shuffled (one shuffle for every frame), which changes them with absolute positions; the IDM's
    encoder follows. ``decoder_positions="rope"`` builds its decoder with 2D rotary positions on the patch grid
    (their behaviour: tests/test_models.py)."""
    cfg = replace(LAM_MODEL, patch_size=4, num_heads=2)
    x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3))
    perm = np.random.default_rng(0).permutation(16)
    shuffled = unpatchify(patchify(x, 4)[:, :, perm], 4, 16, 16)
    for encoder, same in (("none", True), ("absolute", False)):
        for model in (
            LatentActionModel(replace(cfg, encoder_positions=encoder), (16, 16, 3), rngs=nnx.Rngs(0)),
            InverseDynamicsModel(replace(cfg, encoder_positions=encoder), (16, 16, 3), 3, rngs=nnx.Rngs(0)),
        ):
            gap = float(jnp.abs(model.features(shuffled) - model.features(x)).max())
            assert (gap < 1e-4) if same else (gap > 1e-3), (type(model).__name__, encoder, gap)
    lam = LatentActionModel(replace(cfg, decoder_positions="rope"), (16, 16, 3), rngs=nnx.Rngs(0))
    pred, ids, _, _ = lam(x)
    assert pred.shape == (2, 2, 16, 16, 3) and ids.shape == (2, 2)
    assert lam.decoder.blocks[0].grid == (4, 4) and lam.decoder.space_rope and not lam.decoder.space_codes


def test_the_state_adversary_trains_its_head_to_guess_and_the_encoder_to_be_unguessable():
    """Its cross-entropy reaches the adversary's head only, the mutual-information estimate the encoder only
    (never the codebook, the decoder or the head); the loss and logged terms include both; the estimate is
    about 0 for codes frame t-1 says nothing of, and FSQ, negative weights and the IDM refuse."""
    from jasmine.train.components.lam import LAMComponent, state_adversary_terms

    comp = LAMComponent()
    cfg = comp.prepare(LAMTrainConfig(model=LAM_MODEL, image_size=(16, 16, 3), state_adversary=0.5))
    assert cfg.model.adversary
    lam = comp.build(cfg, nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3))

    @nnx.jit
    def both(m):  # the gradients of both terms, in one compiled program
        def term(m, i: int):
            _, ids, _, aux = m(x)
            return state_adversary_terms(m, x, ids, aux["sims"])[i]

        return [nnx.state(nnx.grad(partial(term, i=i))(m), nnx.Param) for i in (0, 1)]

    flat = [{"/".join(map(str, k)): float(jnp.abs(v[...]).sum()) for k, v in nnx.to_flat_state(g)} for g in both(lam)]
    for term, owners in ((0, ("adv_",)), (1, ("encoder", "action_token"))):
        g = flat[term]
        reached = {k for k, v in g.items() if v > 0}
        assert reached and all(k.startswith(owners) for k in reached), (term, sorted(reached)[:5])
        assert any(k.startswith(owners[0]) for k in reached)
    batch = {"frames": np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)}
    loss, metrics, _ = nnx.jit(lambda m, b: comp._terms(m, b, None, cfg))(lam, batch)
    assert float(loss) == pytest.approx(
        float(metrics["mse"] + metrics["codebook_loss"] + LAM_MODEL.commitment_weight * metrics["commitment_loss"]
              + metrics["adversary_ce"] + 0.5 * metrics["adversary_mi"]), rel=1e-5)  # fmt: skip
    # codes independent of frame t-1 (a head that guesses the marginal): the estimate is 0; a head that knows
    # them: the marginal's entropy
    sims = jnp.log(jnp.array([[0.2, 0.3, 0.5, 1e-9], [0.6, 0.1, 0.3, 1e-9]]))[:, None] * 0.1  # soft = those rows
    soft = jax.nn.softmax(sims / 0.1, axis=-1)
    for head, mi in ((jnp.log(soft.mean(axis=0, keepdims=True)), 0.0), (jnp.log(soft), None)):
        lam.guess_codes = lambda _, h=head: jnp.broadcast_to(h, (2, 1, 4))
        got = float(state_adversary_terms(lam, x[:, :2], jnp.zeros((2, 1), jnp.int32), sims)[1])
        mean = soft.mean(axis=(0, 1))
        want = mi if mi is not None else float(-(mean * jnp.log(mean)).sum() + (soft * jnp.log(soft)).sum(-1).mean())
        assert got == pytest.approx(want, abs=1e-4)
    assert want > 0.05
    with pytest.raises(ValueError, match="needs --model.quantizer vq"):
        comp.prepare(replace(cfg, model=replace(LAM_MODEL, quantizer="fsq", fsq_levels=(3, 2))))
    with pytest.raises(ValueError, match="must be >= 0"):
        comp.prepare(replace(cfg, state_adversary=-1.0))
    with pytest.raises(ValueError, match="the IDM has labels"):
        COMPONENTS["idm"].prepare(IDMTrainConfig(model=LAM_MODEL, image_size=(16, 16, 3), state_adversary=0.5))


def test_roll_decoder_rolls_what_the_decoder_sees_and_predicts_never_what_the_encoder_sees():
    """In training the encoder sees each window as it is, the decoder sees it (and is scored on it) rolled by the
    window's own offset; validation rolls nothing; the IDM, which has no decoder, refuses the flag."""
    from jasmine.train.components.base import to_unit
    from jasmine.train.components.lam import LAMComponent

    comp = LAMComponent()
    cfg = comp.prepare(LAMTrainConfig(model=LAM_MODEL, image_size=(16, 16, 3), roll_decoder=3))
    lam = comp.build(cfg, nnx.Rngs(0))
    seen, encode, decode = {}, lam.encode, lam.decode
    lam.encode = lambda v, rng=None: (seen.__setitem__("enc", np.asarray(v)), encode(v, rng=rng))[1]
    lam.decode = lambda v, z: (seen.__setitem__("dec", np.asarray(v)), decode(v, z))[1]
    batch = {"frames": np.random.default_rng(1).integers(0, 256, (6, 3, 16, 16, 3), dtype=np.uint8)}
    x = np.asarray(to_unit(batch["frames"]))
    _, metrics, aux = comp._terms(lam, batch, jax.random.key(2), cfg)
    assert np.array_equal(seen["enc"], x)
    offsets = set()
    for b in range(len(x)):  # one (dy, dx) moves the whole window onto what the decoder saw
        ((dy, dx),) = [(i, j) for i in range(16) for j in range(16)
                       if np.array_equal(np.roll(x[b], (i, j), (1, 2)), seen["dec"][b])]  # fmt: skip
        offsets.add(((dy + 8) % 16 - 8, (dx + 8) % 16 - 8))
    assert len(offsets) > 2 and offsets != {(0, 0)} and max(max(map(abs, o)) for o in offsets) <= 3
    target = seen["dec"][:, 1:]
    assert float(metrics["mse"]) == pytest.approx(float(np.mean((np.asarray(aux["pred"]) - target) ** 2)), rel=1e-5)
    comp._terms(lam, batch, None, cfg)  # validation: as it is
    assert np.array_equal(seen["dec"], x) and np.array_equal(seen["enc"], x)
    with pytest.raises(ValueError, match="the IDM has no decoder"):
        COMPONENTS["idm"].prepare(IDMTrainConfig(model=LAM_MODEL, image_size=(16, 16, 3), roll_decoder=8))


def test_the_train_step_rolls_the_decoder_from_roll_decoder_from_on():
    """The optimizer step reaches the loss: with --roll-decoder-from 1 step 0 is the unrolled recipe's step 0
    (bitwise), step 1 is rolled; bad values are refused."""
    from jasmine.bench import synthetic_batch
    from jasmine.config import OptimConfig
    from jasmine.presets import preset
    from jasmine.train.mesh import global_batch, make_mesh
    from jasmine.train.step import setup

    comp, mesh = COMPONENTS["lam"], make_mesh((1, 1))
    base = replace(preset("lam", "micro"), optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0))

    def mse(cfg, steps=2):
        _, state, _, step = setup(comp.prepare(cfg), comp, mesh, pretrained=False)
        batch = global_batch(synthetic_batch(cfg, comp.batch_keys(cfg), 3), mesh)
        out = []
        for _ in range(steps):
            state, m = step(state, batch)
            out.append(float(m["mse"]))
        return out

    off, later = mse(base), mse(replace(base, roll_decoder=3, roll_decoder_from=1))
    assert later[0] == off[0] and later[1] != off[1]
    for bad in ({"roll_decoder": -1}, {"roll_decoder_from": 5}, {"roll_decoder": 2, "roll_decoder_from": -1}):
        with pytest.raises(ValueError, match="--roll-decoder-from"):
            comp.prepare(replace(base, **bad))


def test_the_coinrun_demo_trains_its_maskgit_longer_and_nothing_else(tmp_path):
    """3,200 MaskGIT steps for CoinRun's `tiny` demo (measured over 3 seeds); every other demo keeps its preset."""
    from jasmine import demo as D
    from jasmine.presets import preset

    fields = {"out": tmp_path / "dynamics", "seed": 2}
    dyn = D.dynamics_config(D.DemoArgs(out=tmp_path), fields)
    assert dyn == replace(preset("dynamics", "tiny"), steps=3200, **fields) and dyn.dynamics == "maskgit"
    for args in (
        D.DemoArgs(env="minatar:breakout", out=tmp_path),
        D.DemoArgs(preset="micro", out=tmp_path),
        D.DemoArgs(dynamics="causal", out=tmp_path),
    ):
        assert D.dynamics_config(args, fields) == replace(preset("dynamics", args.preset, args.dynamics), **fields)


def test_the_minatar_demo_trains_the_breakout_recipe_on_bright_frames(tmp_path, monkeypatch):
    """The MinAtar demo's LAM: twice the preset's steps, the change decoder, the decoder's roll from 40% of
    training; its tokenizer a quarter of the preset's steps; its data in the bright palette. CoinRun keeps the
    presets."""
    from jasmine import demo as D
    from jasmine.presets import preset

    lam = D.lam_config(D.DemoArgs(env="minatar:breakout", out=tmp_path), {"seed": 3})
    tiny = preset("lam", "tiny")
    assert (lam.steps, lam.roll_decoder, lam.roll_decoder_from) == (2 * tiny.steps, 8, int(0.8 * tiny.steps))
    assert lam.model.residual and lam.seed == 3 and lam.out == tmp_path / "lam"
    assert D.lam_config(D.DemoArgs(out=tmp_path), {}) == replace(tiny, out=tmp_path / "lam")
    tok = D.tokenizer_config(D.DemoArgs(env="minatar:breakout", out=tmp_path), "tokenizer", {})
    tiny_tok = preset("tokenizer", "tiny")
    assert tok.steps == int(0.25 * tiny_tok.steps) and tok.out == tmp_path / "tokenizer"
    assert D.tokenizer_config(D.DemoArgs(out=tmp_path), "tokenizer", {}) == replace(
        tiny_tok, out=tmp_path / "tokenizer"
    )
    mae = D.tokenizer_config(D.DemoArgs(env="minatar:breakout", out=tmp_path), "mae", {})
    assert mae == replace(preset("mae", "tiny"), out=tmp_path / "mae")  # measured for the FSQ tokenizer only
    made = []

    class Given(Exception):
        """What the generator was given is all this test needs."""

    def record(gen, kind):
        made.append(gen)
        raise Given

    monkeypatch.setattr(D, "generate_game", record)
    with pytest.raises(Given):
        D._data_stage(D.DemoArgs(env="minatar:breakout", out=tmp_path), D.SIZES["micro"])
    assert made[0].palette == "bright" and made[0].game == "breakout"
