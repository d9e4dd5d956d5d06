"""LAM, MaskGIT dynamics and the Genie composition: masks, alignment, frozen parts, modes, tokens, errors."""

from dataclasses import replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MICRO_DYN, MICRO_LAM, MICRO_RUN, MICRO_TOK, build_once
from flax import nnx

from jasmine.config import DynamicsTrainConfig, LAMTrainConfig, OptimConfig, TokenizerTrainConfig
from jasmine.data.dataset import DataError, iter_records, read_metadata
from jasmine.models.digits import Digits, SamplingOptions
from jasmine.models.dynamics import MaskGITDynamics, frame_actions, sample_mask
from jasmine.models.lam import LatentActionModel
from jasmine.models.maskgit import generate_frame
from jasmine.train.components import COMPONENTS, load_run
from jasmine.train.logging import read_metrics
from jasmine.train.loop import setup, train
from jasmine.train.tokenize import TokenizeArgs, tokenize

TOK_MODEL, LAM_MODEL, DYN_MODEL = MICRO_TOK, MICRO_LAM, MICRO_DYN
RUN = dict(MICRO_RUN, optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0))


def dyn_cfg(data, out, tokenizer, **kw):
    sampling = SamplingOptions(steps=3) if kw.get("dynamics", "maskgit") == "maskgit" else SamplingOptions(top_k=3)
    base = DynamicsTrainConfig(
        data=data, out=out, tokenizer=tokenizer, model=DYN_MODEL, lam_model=LAM_MODEL, val_sampling=sampling, **RUN
    )
    return replace(base, **kw)


def test_mask_statistics_match_p_and_spare_frame_0():
    mask = np.asarray(sample_mask(jax.random.key(0), (4000, 4, 16), 0.5))
    assert not mask[:, 0].any()
    rate_B = mask[:, 1:].mean(axis=(1, 2))
    assert abs(rate_B.mean() - 0.75) < 0.01  # E[p] for p ~ U[0.5, 1)
    assert np.percentile(rate_B, 2) > 0.45 and np.percentile(rate_B, 98) > 0.95  # each sample draws its own p
    assert 0.12 < rate_B.std() < 0.17  # std of U[0.5, 1) is 0.144 (one p per batch would give ~0.05)


def test_the_cosine_schedule_masks_over_the_whole_range_the_sampler_visits():
    mask = np.asarray(sample_mask(jax.random.key(0), (4000, 2, 256), 0.5, schedule="cosine"))
    assert not mask[:, 0].any()
    rate_B = mask[:, 1].mean(axis=-1)
    assert abs(rate_B.mean() - 2 / np.pi) < 0.02  # E[cos(pi/2 u)], u ~ U[0, 1): mask_limit does not apply
    # P(p < 0.25) = 1 - (2/pi) arccos(0.25) = 0.161: the nearly unmasked frames of MaskGIT's last passes
    assert abs((rate_B < 0.25).mean() - 0.161) < 0.03 and rate_B.max() > 0.97 and rate_B.min() < 0.03


def test_mask_recipes_shape_training_only_so_validation_compares_across_recipes():
    dyn = MaskGITDynamics(DYN_MODEL, Digits((16,)), 8, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (4, 5, 4), 0, 16)
    a = jnp.zeros((4, 5, 8))
    keys = (jax.random.key(2), jax.random.key(3))
    plain = dyn.loss(ids, a, keys, training=False)[1]
    for recipe in (dict(mask_schedule="cosine"), dict(mask_limit=0.1), dict(clean_frames=1.0)):
        dyn.cfg = replace(DYN_MODEL, **recipe)
        val = dyn.loss(ids, a, keys, training=False)[1]
        assert all(np.asarray(val[k]) == np.asarray(plain[k]) for k in plain), recipe
        assert float(dyn.loss(ids, a, keys, training=True)[1]["cross_entropy"]) != float(plain["cross_entropy"])
    # clean frames 1.0: every frame after the first left clean in training, so nothing is masked
    assert float(dyn.loss(ids, a, keys, training=True)[0]) == 0.0 < float(plain["cross_entropy"])


@pytest.mark.parametrize("action_mode", ["prepend", "add"])
def test_action_between_t_minus_1_and_t_conditions_frame_t_and_no_earlier_frame(action_mode):
    dyn = MaskGITDynamics(replace(DYN_MODEL, action_mode=action_mode), Digits((16,)), 8, rngs=nnx.Rngs(0))
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

    def z(x):
        return nnx.merge(graphdef, state).encode(x)[0]  # straight-through latents [B, T-1, L]

    jac = jax.jit(jax.jacrev(lambda x: z(x).sum(axis=(0, 2))))(x)  # [T-1, B, T, H, W, C]
    for t in range(1, 5):
        assert np.all(np.asarray(jac[t - 1, :, t + 1 :]) == 0.0), f"action {t - 1}->{t} sees the future"
        assert np.abs(np.asarray(jac[t - 1, :, t])).sum() > 0 and np.abs(np.asarray(jac[t - 1, :, t - 1])).sum() > 0
    ids = lam.infer_actions(x)
    assert ids.shape == (1, 4) and ids.dtype == jnp.int32


def test_gt_actions_are_aligned_with_the_frame_they_lead_to():
    from jasmine.models.genie import Genie

    genie = Genie(
        TOK_MODEL, DYN_MODEL, (16, 16, 3), action_source="gt", lam_cfg=LAM_MODEL, num_actions=7, rngs=nnx.Rngs(0)
    )
    actions = jnp.array([[3, 1, 4, 1]])  # actions[t] is taken after frames[t]
    np.testing.assert_array_equal(genie.action_ids({"actions": actions}), [[3, 1, 4]])  # between (t-1, t) at t-1
    a_BTA, _ = genie.frame_conditioning({"actions": actions})
    np.testing.assert_array_equal(a_BTA[0, 0], 0.0)
    np.testing.assert_allclose(a_BTA[0, 1], genie.action_embed(jnp.array(3)))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
    """Same structure (names, nesting) and bitwise-equal leaves."""
    assert jax.tree.structure(jax.tree.map(np.asarray, a)) == jax.tree.structure(jax.tree.map(np.asarray, b))
    for x, y in zip(_leaves(a), _leaves(b), strict=False):
        np.testing.assert_array_equal(x, y)


def test_frozen_parts_unchanged_and_absent_from_optimizer(runs, tmp_path):
    cfg = dyn_cfg(runs / "data", tmp_path / "dyn", runs / "tok", lam=runs / "lam")
    result = train(cfg, COMPONENTS["dynamics"], progress=False)
    state = result["state"]
    _, tok, _ = load_run(runs / "tok")
    _, lam, _ = load_run(runs / "lam")
    assert_trees_equal(state["frozen"]["tokenizer"], nnx.state(tok, nnx.Param))
    assert_trees_equal(state["frozen"]["lam"], nnx.state(lam, nnx.Param))
    opt_paths = {str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt"])[0]}
    assert opt_paths and not any("tokenizer" in p or "'lam'" in p for p in opt_paths)
    assert set(state["params"].keys()) == {"dynamics"}
    val = read_metrics(tmp_path / "dyn", "val")[-1]
    assert {
        "cross_entropy",
        "top1_accuracy",
        "top16_accuracy",
        "full_frame_psnr",
        "full_frame_ssim",
        "rollout_psnr",
        "rollout_copy_last_psnr",
        "rollout_psnr_minus_copy_last",
    } <= set(val)


def test_co_training_updates_the_lam_and_its_codebook(runs, tmp_path):
    cfg = dyn_cfg(runs / "data", tmp_path / "co", runs / "tok", co_train_lam=True)
    from jasmine.train.mesh import make_mesh

    mesh_state = setup(cfg, COMPONENTS["dynamics"], make_mesh((1, 1)))
    before = jax.tree.map(np.asarray, mesh_state[1]["params"]["lam"])
    result = train(cfg, COMPONENTS["dynamics"], progress=False)
    after = result["state"]["params"]["lam"]
    assert not np.array_equal(before["vq"]["codebook"][...], np.asarray(after["vq"]["codebook"][...]))
    assert not np.array_equal(
        before["decoder"]["proj_out"]["kernel"][...], np.asarray(after["decoder"]["proj_out"]["kernel"][...])
    )
    assert "lam_mse" in read_metrics(tmp_path / "co")[-1]


def test_gt_action_mode_trains_its_embedding(runs, tmp_path):
    result = train(
        dyn_cfg(runs / "data", tmp_path / "gt", runs / "tok", gt_actions=True), COMPONENTS["dynamics"], progress=False
    )
    assert set(result["state"]["params"].keys()) == {"dynamics", "action_embed"}


@pytest.mark.parametrize("family", ["maskgit", "causal"])
def test_overfitting_one_batch_drives_dynamics_loss_down(runs, family):
    from jasmine.bench import synthetic_batch
    from jasmine.train.mesh import global_batch, make_mesh

    cfg = dyn_cfg(
        None,
        None,
        runs / "tok",
        gt_actions=True,
        num_actions=7,
        tokenizer_model=TOK_MODEL,
        dynamics=family,
        optim=OptimConfig(lr=3e-3, warmup_steps=5, decay_fraction=0.0),
    )
    mesh = make_mesh((1, 1))
    _, state, _, step = setup(cfg, COMPONENTS["dynamics"], mesh, pretrained=False)
    batch = global_batch(synthetic_batch(cfg, ("tokens", "actions", "latent_actions"), 7, inputs="tokens"), mesh)
    losses = []
    for _ in range(150):
        state, m = step(state, batch)
        losses.append(float(m["cross_entropy"]))
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("family", ["maskgit", "causal"])
def test_dynamics_resume_is_bitwise_exact(runs, tmp_path, family):
    kw = dict(lam=runs / "lam", steps=4, ckpt_every=2, val_every=3, dynamics=family)
    straight = train(dyn_cfg(runs / "data", tmp_path / "s", runs / "tok", **kw), COMPONENTS["dynamics"], progress=False)
    train(
        dyn_cfg(runs / "data", tmp_path / "r", runs / "tok", **{**kw, "steps": 2}),
        COMPONENTS["dynamics"],
        progress=False,
    )
    resumed = train(
        dyn_cfg(runs / "data", tmp_path / "r", runs / "tok", resume=True, **kw), COMPONENTS["dynamics"], progress=False
    )
    # --resume where no checkpoint exists yet (as `jasmine sweep` launches every run) is the same fresh start:
    # frozen tokenizer and LAM loaded from their runs, not left at their random initialisation
    fresh = train(
        dyn_cfg(runs / "data", tmp_path / "f", runs / "tok", resume=True, **kw), COMPONENTS["dynamics"], progress=False
    )
    for run in (resumed, fresh):
        for a, b in zip(_leaves(straight["state"]), _leaves(run["state"]), strict=True):
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
    result = train(
        dyn_cfg(tmp_path / "tokens", tmp_path / "dyn", runs / "tok", lam=runs / "lam"),
        COMPONENTS["dynamics"],
        progress=False,
    )
    assert result["step"] == 3 and "full_frame_psnr_vs_tokenizer" in result["val"]
    with pytest.raises(DataError, match="--co-train-lam needs raw frames"):
        train(
            dyn_cfg(tmp_path / "tokens", tmp_path / "dyn2", runs / "tok", co_train_lam=True),
            COMPONENTS["dynamics"],
            progress=False,
        )


def test_a_continuous_lam_is_refused_as_the_dynamics_action_source(runs, tmp_path):
    lam_model = replace(LAM_MODEL, quantizer="continuous")
    with pytest.raises(ValueError, match="continuous LAM .* has no codes"):
        train(
            dyn_cfg(runs / "data", tmp_path / "d", runs / "tok", co_train_lam=True, lam_model=lam_model),
            COMPONENTS["dynamics"],
            progress=False,
        )
    assert not (tmp_path / "d").exists()


def test_maskgit_frame_generation_touches_only_its_frame():
    from jasmine.models.maskgit import mask_schedule, unmask_step

    ids = jax.random.randint(jax.random.key(0), (2, 4, 9), 0, 16)

    def logits_fn(ids_BTN, mask_BTN, leak_weight=1.0):  # a mask outside frame 2 pulls every token to id 0
        assert mask_BTN.shape == ids_BTN.shape
        leak = mask_BTN[:, [0, 1, 3]].sum() * 100.0 * leak_weight
        return jax.random.normal(jax.random.key(1), (*ids_BTN.shape, 16)).at[..., 0].add(leak)

    opts = SamplingOptions(steps=5)
    out = generate_frame(logits_fn, ids, 2, jax.random.key(1), opts)
    blind = generate_frame(partial(logits_fn, leak_weight=0.0), ids, 2, jax.random.key(1), opts)
    np.testing.assert_array_equal(out, blind)  # the context was never masked: the leak never fired
    assert (np.asarray(out[:, 2]) != 0).any()
    np.testing.assert_array_equal(out[:, [0, 1, 3]], ids[:, [0, 1, 3]])
    assert mask_schedule(5, 9).tolist() == [8, 7, 5, 2, 0]
    mask = jnp.ones((2, 9), bool)
    frame = jnp.zeros((2, 9), jnp.int32)
    for s in range(5):  # masks only shrink, fixed tokens stay fixed
        logits = jax.random.normal(jax.random.key(s), (2, 9, 16))
        new_frame, new_mask = unmask_step(
            logits, frame, mask, mask_schedule(5, 9)[s], jax.random.key(s), temperature=1.0
        )
        assert not (new_mask & ~mask).any() and int(new_mask.sum(-1)[0]) == mask_schedule(5, 9)[s]
        np.testing.assert_array_equal(new_frame[~mask], frame[~mask])
        frame, mask = new_frame, new_mask


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_skipping_no_op_maskgit_steps_changes_nothing(temperature):
    from jasmine.models.maskgit import mask_schedule, unmask_frame, unmask_step, working_steps

    steps, n, v = 25, 16, 32
    assert working_steps(steps, n).tolist() == [0, 5, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24]
    emb = jax.random.normal(jax.random.key(0), (v + 1, v))  # row v: the mask token

    def frame_logits(ids_BN, mask_BN):  # depends on every unmasked id, through all positions
        x = emb[jnp.where(mask_BN, v, ids_BN)]
        return x + jnp.cumsum(x, axis=1)[:, ::-1] * 0.3

    rng = jax.random.key(3)
    ids, mask = jnp.zeros((2, n), jnp.int32), jnp.ones((2, n), bool)
    choice = 4.5 if temperature > 0 else 0.0  # argmax runs without choice noise
    for s in range(steps):  # every step, as written in the MaskGIT paper
        ids, mask = unmask_step(
            frame_logits(ids, mask),
            ids,
            mask,
            mask_schedule(steps, n)[s],
            jax.random.fold_in(rng, s),
            temperature=temperature,
            choice_noise=choice * (1 - (s + 1) / steps),
        )
    fast = unmask_frame(frame_logits, jnp.zeros((2, n), jnp.int32), rng, SamplingOptions(steps, temperature, 4.5))
    assert not mask.any()
    np.testing.assert_array_equal(fast, ids)


def test_choice_temperature_spreads_the_first_tokens_over_the_frame():
    from jasmine.models.maskgit import unmask_frame, unmask_step

    n, v = 16, 8
    logits = jnp.broadcast_to(jnp.eye(v)[jnp.arange(n) % v] * (20.0 - jnp.arange(n))[:, None], (1, n, v))

    def first(noise, key):
        return set(
            np.flatnonzero(
                ~np.asarray(
                    unmask_step(  # positions fixed by the first step
                        logits,
                        jnp.zeros((1, n), jnp.int32),
                        jnp.ones((1, n), bool),
                        n - 4,
                        key,
                        temperature=1.0,
                        choice_noise=noise,
                    )[1][0]
                )
            ).tolist()
        )

    assert all(first(0.0, jax.random.key(k)) == {0, 1, 2, 3} for k in range(10))  # only the most confident
    noisy = [first(4.5 * 24 / 25, jax.random.key(k)) for k in range(10)]
    assert len({frozenset(f) for f in noisy}) > 5 and set().union(*noisy) - {0, 1, 2, 3}
    emb = jax.random.normal(jax.random.key(0), (v + 1, v))

    def fn(ids, mask):
        return emb[jnp.where(mask, v, ids)] + jnp.cumsum(emb[jnp.where(mask, v, ids)], axis=1) * 0.5

    runs = [
        unmask_frame(fn, jnp.zeros((1, n), jnp.int32), jax.random.key(0), SamplingOptions(8, 1.0, c)) for c in (0, 9)
    ]
    assert not np.array_equal(runs[0], runs[1])  # the option reaches the sampler


@pytest.mark.parametrize(
    "kw, data, match",
    [
        ({"gt_actions": True}, "noact", "--gt-actions: dataset .*noact has no actions"),
        (
            {"lam": "LAM"},
            "data32",
            r"--tokenizer .*tok was trained on \[16, 16, 3\] frames but --data .*data32 holds \[32, 32, 3\]",
        ),
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
        train(
            dyn_cfg(runs / "data", tmp_path / "y", runs / "nope", gt_actions=True),
            COMPONENTS["dynamics"],
            progress=False,
        )


def test_co_training_can_start_from_a_lam_run(runs, tmp_path):
    from jasmine.train.mesh import make_mesh

    cfg = dyn_cfg(runs / "data", tmp_path / "co2", runs / "tok", lam=runs / "lam", co_train_lam=True)
    cfg = COMPONENTS["dynamics"].prepare(cfg)
    _, state, _, _ = setup(cfg, COMPONENTS["dynamics"], make_mesh((1, 1)))
    _, lam, _ = load_run(runs / "lam")
    assert_trees_equal(state["params"]["lam"], nnx.state(lam, nnx.Param))  # starts from the run ...
    after = train(cfg, COMPONENTS["dynamics"], progress=False)["state"]["params"]["lam"]
    assert any(
        not np.array_equal(a, b) for a, b in zip(_leaves(after), _leaves(nnx.state(lam, nnx.Param)), strict=False)
    )  # ... and trains it


# ---------------------------------------------------------------------------- the encoding rule and provenance

RULE_TOK = replace(TOK_MODEL, quantizer="fsq", fsq_levels=(5, 5, 5))  # many codes: tokens move with any change
RULE_LAM = replace(LAM_MODEL, quantizer="fsq", fsq_levels=(3, 3, 3))


@pytest.fixture(scope="session")
def rule_runs(runs):
    """A tokenizer trained on windows of 3 frames and a LAM on windows of 3: clips align to lcm(3, 2) = 6."""
    one = {**RUN, "steps": 1, "val_every": 1, "ckpt_every": 1}

    def build(root):
        train(
            TokenizerTrainConfig(data=root / "data", out=root / "tok3", model=RULE_TOK, **{**one, "seq_len": 3}),
            COMPONENTS["tokenizer"],
            progress=False,
        )
        train(
            TokenizerTrainConfig(
                data=root / "data", out=root / "tok3b", model=RULE_TOK, **{**one, "seq_len": 3, "seed": 1}
            ),
            COMPONENTS["tokenizer"],
            progress=False,
        )
        train(
            LAMTrainConfig(data=root / "data", out=root / "lam3", model=RULE_LAM, **{**one, "seq_len": 3}),
            COMPONENTS["lam"],
            progress=False,
        )
        tokenize(TokenizeArgs(tokenizer=root / "tok3", data=root / "data", out=root / "tokens3", lam=root / "lam3"))

    return build_once(runs, "rule_runs", build)


def frame_keys(frames):
    """(episode, frame index) of each frame [..., H, W, C] of the synthetic data."""
    return np.stack([frames[..., 0, 0, 1], frames[..., 0, 0, 0]], -1).astype(int)


def test_a_frame_gets_the_same_tokens_and_action_everywhere(rule_runs):
    """data tokenize, training on frames (aligned loader windows), and eval/sample clips all agree."""
    from jasmine.data.loader import make_loader
    from jasmine.sample.clips import infer_actions, read_clips
    from jasmine.sample.rollout import Rollout

    root = rule_runs
    ref_tok, ref_act = {}, {}
    meta = read_metadata(root / "tokens3")
    for (tok_rec, _), (src, _) in zip(
        iter_records(root / "tokens3", meta, "train"),
        iter_records(root / "data", read_metadata(root / "data"), "train"),
        strict=False,
    ):
        for key, ids, a in zip(frame_keys(src["frames"]), tok_rec["tokens"], tok_rec["latent_actions"], strict=False):
            ref_tok[tuple(key)], ref_act[tuple(key)] = ids, a
    cfg = COMPONENTS["dynamics"].prepare(
        dyn_cfg(root / "data", root / "unused", root / "tok3", lam=root / "lam3", seq_len=7)
    )
    align = COMPONENTS["dynamics"].align(cfg)
    genie = COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0))
    assert align == 6 and genie.align == 6
    checked = 0
    for batch in [
        next(it)
        for it in [
            iter(
                make_loader(
                    root / "data",
                    "train",
                    seq_len=7,
                    batch_size=4,
                    seed=s,
                    align=align,
                    process_index=0,
                    process_count=1,
                )
            )
            for s in range(3)
        ]
    ]:
        ids, acts = genie.tokens(batch), genie.action_ids(batch)
        for b, keys in enumerate(frame_keys(batch["frames"])):
            for t, key in enumerate(map(tuple, keys)):
                np.testing.assert_array_equal(ids[b, t], ref_tok[key])
                if t >= 1:  # the action into frame t
                    assert acts[b, t - 1] == ref_act[key]
                checked += 1
    assert checked == 3 * 4 * 7
    assert len({tuple(np.asarray(v)) for v in ref_tok.values()}) > 20  # tokens do vary from frame to frame
    clips = read_clips(genie, root / "data", "train", 4, 9, seed=0)
    assert (clips["start"] % 6 == 0).all()
    ids = Rollout(genie, 7).encode(clips["frames"])
    acts = infer_actions(genie, clips["frames"])
    for b, keys in enumerate(frame_keys(clips["frames"])):
        for t, key in enumerate(map(tuple, keys)):
            np.testing.assert_array_equal(ids[b, t], ref_tok[key])
            if t >= 1:
                assert acts[b, t - 1] == ref_act[key]


def test_provenance_is_recorded_and_a_mismatch_is_refused(rule_runs, tmp_path):
    root = rule_runs
    meta = read_metadata(root / "tokens3")
    assert meta["tokenizer"]["step"] == 1 and len(meta["tokenizer"]["hash"]) == 16 and meta["lam"]["window"] == 3
    kw = dict(lam=root / "lam3", seq_len=7, steps=1)
    with pytest.raises(
        DataError, match=r"(?s)was made with tokenizer .*tok3 step 1 \(params \w+\), but --tokenizer is .*tok3b"
    ):
        train(dyn_cfg(root / "tokens3", tmp_path / "a", root / "tok3b", **kw), COMPONENTS["dynamics"], progress=False)
    with pytest.raises(ValueError, match=r"--tokenizer .*tok3 step 1 has params hash \w+, but 0123 was asked for"):
        train(
            dyn_cfg(root / "tokens3", tmp_path / "b", root / "tok3", tokenizer_hash="0123", **kw),
            COMPONENTS["dynamics"],
            progress=False,
        )
    with pytest.raises(DataError, match=r"was made with lam .*lam3 .* but --lam is .*lam "):
        train(
            dyn_cfg(root / "tokens3", tmp_path / "c", root / "tok3", **{**kw, "lam": root / "lam"}),
            COMPONENTS["dynamics"],
            progress=False,
        )
    result = train(
        dyn_cfg(root / "tokens3", tmp_path / "ok", root / "tok3", **kw), COMPONENTS["dynamics"], progress=False
    )
    saved = load_run(tmp_path / "ok")[0]
    assert saved.tokenizer_hash == meta["tokenizer"]["hash"] and saved.lam_hash == meta["lam"]["hash"]
    assert saved.tokenizer_step == 1 and saved.tokenizer_window == 3 and result["step"] == 1
    from jasmine.train.runs import param_hash

    assert param_hash(load_run(tmp_path / "ok")[1].tokenizer) == meta["tokenizer"]["hash"]  # the frozen copy is it
    with pytest.raises(ValueError, match=r"(?s)does not match.*tokenizer_hash"):  # resume with another tokenizer
        train(
            dyn_cfg(root / "data", tmp_path / "ok", root / "tok3b", resume=True, **{**kw, "steps": 2}),
            COMPONENTS["dynamics"],
            progress=False,
        )


def test_co_trained_lam_windows_must_tile_the_clip(runs, tmp_path):
    with pytest.raises(ValueError, match="seq_len - 1 must be a multiple of 3"):
        COMPONENTS["dynamics"].prepare(
            dyn_cfg(runs / "data", tmp_path / "x", runs / "tok", lam=runs / "lam", co_train_lam=True, seq_len=6)
        )


@pytest.mark.parametrize("detach", [False, True])
def test_detach_lam_keeps_dynamics_gradients_out_of_the_co_trained_lam(runs, detach):
    from jasmine.bench import synthetic_batch

    cfg = COMPONENTS["dynamics"].prepare(
        dyn_cfg(runs / "data", None, runs / "tok", co_train_lam=True, detach_lam=detach)
    )
    genie = COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0), pretrained=False)
    batch = synthetic_batch(cfg, ("frames",))
    graphdef, lam_params, rest = nnx.split(genie, lambda path, v: isinstance(v, nnx.Param) and path[0] == "lam", ...)

    def losses(lam_params):
        g = nnx.merge(graphdef, lam_params, rest)
        _, metrics, _ = COMPONENTS["dynamics"].loss(g, batch, jax.random.key(0), cfg, training=True)
        return metrics["cross_entropy"], metrics["lam_loss"]

    g_dyn, g_lam = jax.jit(lambda p: (jax.grad(lambda q: losses(q)[0])(p), jax.grad(lambda q: losses(q)[1])(p)))(
        lam_params
    )
    dyn_norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g_dyn))
    assert (dyn_norm == 0.0) == detach, dyn_norm
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g_lam)) > 0  # the LAM still learns from its own loss


def test_digit_tokens_embed_predict_and_sample_per_digit():
    d = Digits((4, 3, 5))
    ids = jnp.arange(60)
    np.testing.assert_array_equal(d.ids(d.digits(ids)), ids)  # mixed radix round trip, least significant first
    np.testing.assert_array_equal(d.digits(jnp.array(7)), [3, 1, 0])
    logits = jax.random.normal(jax.random.key(0), (60, d.width))
    joint = sum(
        lp[:, :, None, None] if k == 0 else lp[:, None, :, None] if k == 1 else lp[:, None, None, :]
        for k, lp in enumerate(d.log_softmax(logits))
    )  # log p of every (d0, d1, d2)
    np.testing.assert_allclose(jax.nn.logsumexp(joint.reshape(60, -1), axis=-1), 0.0, atol=1e-5)  # a distribution
    np.testing.assert_allclose(
        d.log_prob(logits, ids), joint.transpose(0, 3, 2, 1).reshape(60, 60)[ids, ids], atol=1e-5
    )
    draws = np.asarray(d.sample(jax.random.key(1), jnp.broadcast_to(logits[0], (20000, d.width)), 1.0))
    freq = np.bincount(draws, minlength=60) / 20000  # sampled ids follow the product of the digit marginals
    np.testing.assert_allclose(freq, np.exp(d.log_prob(jnp.broadcast_to(logits[0], (60, d.width)), ids)), atol=0.015)
    peaked = jnp.full((1, d.width), -30.0).at[0, jnp.array([1, 3, 4 + 0, 4 + 2, 7 + 4])].set(0.0)
    # digit 0: levels 1 and 3 equally likely → expected 2 (argmax says 1); digit 1: 0 or 2 → 1; digit 2: 4
    np.testing.assert_array_equal(d.digits(d.sample(None, peaked, 0.0, ordinal=True)), [[2, 1, 4]])
    np.testing.assert_array_equal(d.digits(d.sample(None, peaked, 0.0)), [[1, 0, 4]])
    one = Digits((7,))  # a VQ token: one softmax over the vocabulary
    lg = jax.random.normal(jax.random.key(2), (5, 7))
    np.testing.assert_allclose(
        one.log_prob(lg, jnp.arange(5)), jax.nn.log_softmax(lg)[jnp.arange(5), jnp.arange(5)], atol=1e-6
    )
    from jasmine.models.dynamics import masked_token_metrics

    ids_BTN = jnp.array([[[7, 59]]])
    perfect = jnp.concatenate([jax.nn.one_hot(d.digits(ids_BTN)[..., k], v) * 50 for k, v in enumerate(d.levels)], -1)
    _, m = masked_token_metrics(perfect, ids_BTN, jnp.ones((1, 1, 2), bool), d)
    assert m["top1_accuracy"] == 1.0 and m["cross_entropy"] < 1e-6
    _, m = masked_token_metrics(perfect.at[0, 0, 0, 0].set(99.0), ids_BTN, jnp.ones((1, 1, 2), bool), d)
    assert m["top1_accuracy"] == 0.5  # one digit of the first token is now wrong


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ordinal_decoding_is_refused_without_ordered_levels_or_with_sampling(runs, temperature):
    from jasmine.sample.rollout import Rollout, SampleOptions

    cfg = COMPONENTS["dynamics"].prepare(dyn_cfg(runs / "data", None, runs / "tok", co_train_lam=True))
    genie = COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0), pretrained=False)  # VQ tokens: ids are not ordered levels
    if temperature == 0.0:
        Rollout(genie, 4, SampleOptions(temperature=0.0))  # argmax is fine
    with pytest.raises(ValueError, match=r"--ordinal needs --temperature 0 and an FSQ tokenizer.*digits \(\d+,\)"):
        Rollout(genie, 4, SampleOptions(temperature=temperature, ordinal=True))
