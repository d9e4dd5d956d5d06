"""LAM, MaskGIT dynamics and the Genie composition: masks, alignment, frozen parts, modes, tokens, errors."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import write_synthetic
from jasmine.config import DynamicsTrainConfig, LAMTrainConfig, OptimConfig, TokenizerTrainConfig
from jasmine.data.dataset import DataError, iter_records, read_metadata
from jasmine.data.tokenize import TokenizeArgs, tokenize
from jasmine.models.dynamics import DynamicsConfig, MaskGITDynamics, frame_actions, sample_mask
from jasmine.models.lam import LAMConfig, LatentActionModel
from jasmine.models.tokenizer import TokenizerConfig
from jasmine.sample.maskgit import generate_frame
from jasmine.train.components import COMPONENTS
from jasmine.train.loop import load_run, setup, train
from jasmine.train.logging import read_metrics

TOK_MODEL = TokenizerConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8, num_latents=16)
LAM_MODEL = LAMConfig(patch_size=8, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8, num_latents=4,
                      dead_code_reset_steps=0)
DYN_MODEL = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2)
RUN = dict(steps=3, batch_size=4, seq_len=4, image_size=(16, 16, 3), log_every=1, val_every=3, val_batches=1,
           ckpt_every=3, optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0))


def dyn_cfg(data, out, tokenizer, **kw):
    base = DynamicsTrainConfig(data=data, out=out, tokenizer=tokenizer, model=DYN_MODEL, lam_model=LAM_MODEL,
                               val_maskgit_steps=3, **RUN)
    return replace(base, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("genie")
    write_synthetic(root / "data", lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    write_synthetic(root / "noact", lengths=(40, 33), frame_shape=(16, 16, 3), actions=False)
    write_synthetic(root / "data32", lengths=(40, 33), frame_shape=(32, 32, 3))
    train(TokenizerTrainConfig(data=root / "data", out=root / "tok", model=TOK_MODEL, **RUN), COMPONENTS["tokenizer"],
          progress=False)
    train(LAMTrainConfig(data=root / "data", out=root / "lam", model=LAM_MODEL, **RUN), COMPONENTS["lam"], progress=False)
    return root


def test_mask_statistics_match_p_and_spare_frame_0():
    mask = np.asarray(sample_mask(jax.random.key(0), (4000, 4, 16), 0.5))
    assert not mask[:, 0].any()
    rate_B = mask[:, 1:].mean(axis=(1, 2))
    assert abs(rate_B.mean() - 0.75) < 0.01  # E[p] for p ~ U[0.5, 1)
    assert np.percentile(rate_B, 2) > 0.45 and np.percentile(rate_B, 98) > 0.95  # each sample draws its own p
    assert 0.12 < rate_B.std() < 0.17  # std of U[0.5, 1) is 0.144 (one p per batch would give ~0.05)


@pytest.mark.parametrize("action_mode", ["prepend", "add"])
def test_action_between_t_minus_1_and_t_conditions_frame_t_and_no_earlier_frame(action_mode):
    dyn = MaskGITDynamics(replace(DYN_MODEL, action_mode=action_mode), 16, 8, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (2, 5, 4), 0, 16)
    mask = jnp.zeros((2, 5, 4), bool).at[:, 1:, ::2].set(True)
    a_BT1A = jax.random.normal(jax.random.key(2), (2, 4, 8))
    jac = jax.jit(jax.jacrev(lambda a: dyn(ids, mask, frame_actions(a)).sum(axis=(0, 2, 3))))(a_BT1A)  # [T, B, T-1, A]
    for t in range(1, 5):  # a_BT1A[:, t-1] is the action between frames t-1 and t
        assert np.all(np.asarray(jac[:t, :, t - 1]) == 0.0), f"action {t - 1}->{t} leaks into an earlier frame"
        assert np.abs(np.asarray(jac[t, :, t - 1])).sum() > 0, f"action {t - 1}->{t} does not condition frame {t}"


def test_lam_action_between_t_minus_1_and_t_sees_frames_up_to_t_only():
    lam = LatentActionModel(LAM_MODEL, (16, 16, 3), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (1, 5, 16, 16, 3))
    graphdef, state = nnx.split(lam)
    z = lambda x: nnx.merge(graphdef, state).encode(x)[0]  # straight-through latents [B, T-1, L]
    jac = jax.jit(jax.jacrev(lambda x: z(x).sum(axis=(0, 2))))(x)  # [T-1, B, T, H, W, C]
    for t in range(1, 5):
        assert np.all(np.asarray(jac[t - 1, :, t + 1 :]) == 0.0), f"action {t - 1}->{t} sees the future"
        assert np.abs(np.asarray(jac[t - 1, :, t])).sum() > 0 and np.abs(np.asarray(jac[t - 1, :, t - 1])).sum() > 0
    ids = lam.infer_actions(x)
    assert ids.shape == (1, 4) and ids.dtype == jnp.int32


def test_gt_actions_are_aligned_with_the_frame_they_lead_to():
    from jasmine.models.genie import Genie

    genie = Genie(TOK_MODEL, DYN_MODEL, (16, 16, 3), action_source="gt", lam_cfg=LAM_MODEL, num_actions=7, rngs=nnx.Rngs(0))
    actions = jnp.array([[3, 1, 4, 1]])  # actions[t] is taken after frames[t]
    np.testing.assert_array_equal(genie.action_ids({"actions": actions}), [[3, 1, 4]])  # between (t-1, t) at t-1
    a_BTA, _ = genie.frame_conditioning({"actions": actions})
    np.testing.assert_array_equal(a_BTA[0, 0], 0.0)
    np.testing.assert_allclose(a_BTA[0, 1], genie.action_embed(jnp.array(3)))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_frozen_parts_unchanged_and_absent_from_optimizer(runs, tmp_path):
    cfg = dyn_cfg(runs / "data", tmp_path / "dyn", runs / "tok", lam=runs / "lam")
    result = train(cfg, COMPONENTS["dynamics"], progress=False)
    state = result["state"]
    _, tok, _ = load_run(runs / "tok")
    _, lam, _ = load_run(runs / "lam")
    for a, b in zip(_leaves(state["frozen"]["tokenizer"]), _leaves(nnx.state(tok, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(state["frozen"]["lam"]), _leaves(nnx.state(lam, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    opt_paths = {str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt"])[0]}
    assert opt_paths and not any("tokenizer" in p or "'lam'" in p for p in opt_paths)
    assert set(state["params"].keys()) == {"dynamics"}
    val = read_metrics(tmp_path / "dyn", "val")[-1]
    assert {"cross_entropy", "top1_accuracy", "top16_accuracy", "full_frame_psnr", "full_frame_ssim"} <= set(val)


def test_co_training_updates_the_lam_and_its_codebook(runs, tmp_path):
    cfg = dyn_cfg(runs / "data", tmp_path / "co", runs / "tok", co_train_lam=True)
    from jasmine.train.mesh import make_mesh

    mesh_state = setup(cfg, COMPONENTS["dynamics"], make_mesh(1))
    before = jax.tree.map(np.asarray, mesh_state[1]["params"]["lam"])
    result = train(cfg, COMPONENTS["dynamics"], progress=False)
    after = result["state"]["params"]["lam"]
    assert not np.array_equal(before["vq"]["codebook"][...], np.asarray(after["vq"]["codebook"][...]))
    assert not np.array_equal(before["decoder"]["proj_out"]["kernel"][...], np.asarray(after["decoder"]["proj_out"]["kernel"][...]))
    assert "lam_mse" in read_metrics(tmp_path / "co")[-1]


def test_gt_action_mode_trains_its_embedding(runs, tmp_path):
    result = train(dyn_cfg(runs / "data", tmp_path / "gt", runs / "tok", gt_actions=True), COMPONENTS["dynamics"],
                   progress=False)
    assert set(result["state"]["params"].keys()) == {"dynamics", "action_embed"}


def test_overfitting_one_batch_drives_dynamics_loss_down(runs):
    from jasmine.bench import synthetic_batch
    from jasmine.train.mesh import global_batch, make_mesh

    cfg = dyn_cfg(None, None, runs / "tok", gt_actions=True, num_actions=7, tokenizer_model=TOK_MODEL,
                  optim=OptimConfig(lr=3e-3, warmup_steps=5, decay_fraction=0.0))
    mesh = make_mesh(1)
    _, state, _, step = setup(cfg, COMPONENTS["dynamics"], mesh, pretrained=False)
    batch = global_batch(synthetic_batch(cfg, ("tokens", "actions", "latent_actions"), 7, inputs="tokens"), mesh)
    losses = []
    for _ in range(150):
        state, m = step(state, batch)
        losses.append(float(m["cross_entropy"]))
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_dynamics_resume_is_bitwise_exact(runs, tmp_path):
    kw = dict(lam=runs / "lam", steps=4, ckpt_every=2, val_every=10)
    straight = train(dyn_cfg(runs / "data", tmp_path / "s", runs / "tok", **kw), COMPONENTS["dynamics"], progress=False)
    train(dyn_cfg(runs / "data", tmp_path / "r", runs / "tok", **{**kw, "steps": 2}), COMPONENTS["dynamics"], progress=False)
    resumed = train(dyn_cfg(runs / "data", tmp_path / "r", runs / "tok", resume=True, **kw), COMPONENTS["dynamics"],
                    progress=False)
    for a, b in zip(_leaves(straight["state"]["params"]), _leaves(resumed["state"]["params"])):
        np.testing.assert_array_equal(a, b)


def test_pretokenized_data_trains_and_matches_the_tokenizer(runs, tmp_path):
    meta = tokenize(TokenizeArgs(tokenizer=runs / "tok", data=runs / "data", out=tmp_path / "tokens", lam=runs / "lam"))
    assert set(meta["arrays"]) == {"tokens", "actions", "latent_actions"}
    _, tok, _ = load_run(runs / "tok")
    _, lam, _ = load_run(runs / "lam")
    src = next(iter_records(runs / "data", read_metadata(runs / "data"), "train"))[0]
    out = next(iter_records(tmp_path / "tokens", read_metadata(tmp_path / "tokens"), "train"))[0]
    frames = jnp.asarray(src["frames"][None, :4], jnp.float32) / 255.0  # the first window of seq_len 4 frames
    np.testing.assert_array_equal(out["tokens"][:4], tok.encode(frames)[0])
    np.testing.assert_array_equal(out["latent_actions"][1:4], lam.infer_actions(frames)[0])
    np.testing.assert_array_equal(out["actions"], src["actions"])
    result = train(dyn_cfg(tmp_path / "tokens", tmp_path / "dyn", runs / "tok", lam=runs / "lam"),
                   COMPONENTS["dynamics"], progress=False)
    assert result["step"] == 3 and "full_frame_psnr_vs_tokenizer" in result["val"]
    with pytest.raises(DataError, match="--co-train-lam needs raw frames"):
        train(dyn_cfg(tmp_path / "tokens", tmp_path / "dyn2", runs / "tok", co_train_lam=True), COMPONENTS["dynamics"],
              progress=False)


def test_maskgit_frame_generation_touches_only_its_frame():
    from jasmine.sample.maskgit import mask_schedule, unmask_step

    ids = jax.random.randint(jax.random.key(0), (2, 4, 9), 0, 16)

    def logits_fn(ids_BTN, mask_BTN):  # masks outside frame 2 would change the logits and so the output
        assert mask_BTN.shape == ids_BTN.shape
        leak = mask_BTN[:, [0, 1, 3]].sum() * 100.0
        return jax.random.normal(jax.random.key(1), (*ids_BTN.shape, 16)) + leak

    out = generate_frame(logits_fn, ids, 2, jax.random.key(1), steps=5)
    np.testing.assert_array_equal(out[:, [0, 1, 3]], ids[:, [0, 1, 3]])
    assert mask_schedule(5, 9).tolist() == [8, 7, 5, 2, 0]
    mask = jnp.ones((2, 9), bool)
    frame = jnp.zeros((2, 9), jnp.int32)
    for s in range(5):  # masks only shrink, fixed tokens stay fixed
        logits = jax.random.normal(jax.random.key(s), (2, 9, 16))
        new_frame, new_mask = unmask_step(logits, frame, mask, mask_schedule(5, 9)[s], jax.random.key(s), temperature=1.0)
        assert not (new_mask & ~mask).any() and int(new_mask.sum(-1)[0]) == mask_schedule(5, 9)[s]
        np.testing.assert_array_equal(new_frame[~mask], frame[~mask])
        frame, mask = new_frame, new_mask


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_skipping_no_op_maskgit_steps_changes_nothing(temperature):
    from jasmine.sample.maskgit import mask_schedule, unmask_frame, unmask_step, working_steps

    steps, n, v = 25, 16, 32
    assert working_steps(steps, n).tolist() == [0, 5, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24]
    emb = jax.random.normal(jax.random.key(0), (v + 1, v))  # row v: the mask token

    def frame_logits(ids_BN, mask_BN):  # depends on every unmasked id, through all positions
        x = emb[jnp.where(mask_BN, v, ids_BN)]
        return x + jnp.cumsum(x, axis=1)[:, ::-1] * 0.3

    rng = jax.random.key(3)
    ids, mask = jnp.zeros((2, n), jnp.int32), jnp.ones((2, n), bool)
    for s in range(steps):  # every step, as written in the MaskGIT paper
        ids, mask = unmask_step(frame_logits(ids, mask), ids, mask, mask_schedule(steps, n)[s],
                                jax.random.fold_in(rng, s), temperature=temperature)
    fast = unmask_frame(frame_logits, jnp.zeros((2, n), jnp.int32), rng, steps=steps, temperature=temperature)
    assert not mask.any()
    np.testing.assert_array_equal(fast, ids)


@pytest.mark.parametrize(
    "kw, data, match",
    [
        ({"gt_actions": True}, "noact", "--gt-actions: dataset .*noact has no actions"),
        ({"lam": "LAM"}, "data32", r"--tokenizer .*tok was trained on \[16, 16, 3\] frames but --data .*data32 holds \[32, 32, 3\]"),
        ({"lam": "missing"}, "data", "run directory .*missing does not exist"),
        ({}, "data", "choose exactly one action source"),
        ({"lam": "LAM", "gt_actions": True}, "data", r"choose exactly one action source.*\(got frozen, gt\)"),
    ],
)
def test_dynamics_input_errors(runs, tmp_path, kw, data, match):
    kw = {k: (runs / "lam" if v == "LAM" else runs / v if k == "lam" else v) for k, v in kw.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train(dyn_cfg(runs / data, tmp_path / "x", runs / "tok", **kw), COMPONENTS["dynamics"], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(dyn_cfg(runs / "data", tmp_path / "y", runs / "nope", gt_actions=True), COMPONENTS["dynamics"], progress=False)


def test_co_training_can_start_from_a_lam_run(runs, tmp_path):
    from jasmine.train.mesh import make_mesh

    cfg = dyn_cfg(runs / "data", tmp_path / "co2", runs / "tok", lam=runs / "lam", co_train_lam=True)
    cfg = COMPONENTS["dynamics"].prepare(cfg)
    _, state, _, _ = setup(cfg, COMPONENTS["dynamics"], make_mesh(1))
    _, lam, _ = load_run(runs / "lam")
    for a, b in zip(_leaves(state["params"]["lam"]), _leaves(nnx.state(lam, nnx.Param))):
        np.testing.assert_array_equal(a, b)  # starts from the run ...
    after = train(cfg, COMPONENTS["dynamics"], progress=False)["state"]["params"]["lam"]
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(after), _leaves(nnx.state(lam, nnx.Param))))  # ... and trains it
