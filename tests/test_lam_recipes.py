"""LAM recipe options that keep places out of the codes: position-free encoders, rotary decoders, and the state
adversary (gradient routing, and its errors)."""

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
