"""Sampling (MaskGIT + frame-level KV cache), metrics, the eval/sample commands and the demo pipeline."""

import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MICRO_LAM, MICRO_TOK
from flax import nnx

from jasmine.eval.metrics import psnr_ssim, summarise_rollouts
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.genie import Genie
from jasmine.sample.clips import check_lengths, choose_actions, load_genie
from jasmine.sample.rollout import Rollout, SampleOptions

TOK, LAM = MICRO_TOK, MICRO_LAM


def genie(action_mode="prepend", blocks=2, time_positions="absolute", tokenizer_window=1):
    dyn = DynamicsConfig(
        model_dim=32, ffn_dim=64, num_blocks=blocks, num_heads=2, action_mode=action_mode, time_positions=time_positions
    )
    return Genie(TOK, dyn, (16, 16, 3), lam_cfg=LAM, tokenizer_window=tokenizer_window, rngs=nnx.Rngs(0))


def rollout(g, cache, seed=3, frames=8, window=5, temperature=1.0, ctx_len=2):
    ctx = jax.random.randint(jax.random.key(0), (2, ctx_len, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (2, ctx_len + frames - 1), 0, 4)
    r = Rollout(g, window, SampleOptions(steps=4, temperature=temperature, cache=cache))
    return np.asarray(ctx), np.asarray(r.run(ctx, acts, jax.random.key(seed), num_frames=frames))


@pytest.mark.parametrize(
    "action_mode,time_positions", [("prepend", "absolute"), ("add", "absolute"), ("prepend", "rope")]
)
def test_cache_gives_identical_tokens_also_past_the_window(action_mode, time_positions):
    """Absolute positions: the window slides by re-prefilling; rope: a ring cache against the uncached
    banded window of receptive_frames (2 blocks: 9 frames), both past the window."""
    g = genie(action_mode, time_positions=time_positions, tokenizer_window=2)
    frames = 12 if time_positions == "rope" else 8
    ctx, cached = rollout(g, True, frames=frames)  # 2 + 8 frames with a window of 5: slides 5 times
    _, full = rollout(g, False, frames=frames)
    np.testing.assert_array_equal(cached, full)
    assert cached.shape == (2, 2 + frames, 16)


def family_genie(family, time_positions):
    dyn = DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=2, num_heads=2, time_positions=time_positions)
    tok = TOK
    if family == "diffusion":
        from jasmine.models.mae import MAEConfig

        tok = MAEConfig(patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=4)
    return Genie(tok, dyn, (16, 16, 3), family=family, lam_cfg=LAM, tokenizer_window=2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "family,time_positions",
    [("maskgit", "absolute"), ("maskgit", "rope"), ("causal", "absolute"), ("diffusion", "rope")],
)
def test_a_stream_that_defers_writing_each_frame_to_its_cache_gives_the_same_frames(family, time_positions):
    """play shows a frame before writing it into the caches (``step(defer=True)``, then ``settle``): a stream
    settled at irregular points, or only by its next step, gives the uncached rollout's frames past the window
    (absolute: the settle before a slide re-prefills instead), and the write waits for the settle."""
    g, W, F = family_genie(family, time_positions), 4, 9
    shape = (2, 2, 16, 4) if family == "diffusion" else (2, 2, 16)
    ctx = jax.random.randint(jax.random.key(0), shape, 0, 16)
    ctx = jnp.tanh(ctx / 8.0) if family == "diffusion" else ctx
    acts = jax.random.randint(jax.random.key(1), (2, 1 + F), 0, 4)
    opts = {  # greedy tokens: an untrained model's logits barely move, and sampling noise would hide it
        "maskgit": SampleOptions(steps=3, temperature=0.0),
        "causal": SampleOptions(temperature=0.0),
        "diffusion": SampleOptions(steps=3),
    }[family]
    want = np.asarray(Rollout(g, W, replace(opts, cache=False)).run(ctx, acts, jax.random.key(2), num_frames=F))
    roll = Rollout(g, W, opts)
    stream = roll.start(ctx, acts[:, :1], jax.random.key(2))
    writes = []
    for name in ("_commit", "_prefill"):
        fn = getattr(roll, name)
        setattr(roll, name, lambda *a, fn=fn, name=name: writes.append(name) or fn(*a))
    for i in range(F):
        n, left = len(writes), stream.unsettled
        stream.step(acts[:, 1 + i], defer=True)
        assert stream.unsettled and len(writes) == n + left  # the frame before written first, this one not yet
        if i % 3 == 0:
            stream.settle()
            assert not stream.unsettled and len(writes) == n + left + 1
            stream.settle()  # nothing left: a no-op
            assert len(writes) == n + left + 1
        if i == 0:  # within the first window: the caches hold what a prefill of the frames so far holds
            t = len(stream.frames)
            ref = roll._prefill(
                roll.state, jnp.stack(stream.frames, 1), stream._window_actions(0, t), stream.context_rng
            )
            got_kv, ref_kv = (c["kv"] if isinstance(c, dict) else c for c in (stream.caches, ref))
            for a, b in zip(jax.tree.leaves(got_kv), jax.tree.leaves(ref_kv), strict=True):
                np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-5)
    got = np.asarray(jnp.stack(stream.frames, 1))
    np.testing.assert_allclose(got, want, atol=5e-5) if family == "diffusion" else np.testing.assert_array_equal(
        got, want
    )
    if time_positions == "absolute":
        assert "_prefill" in writes  # the window slid while settling


def test_rope_rollouts_past_the_window_follow_the_banded_forward_over_the_whole_sequence():
    """Past seq_len, a rope rollout's greedy one-step frame t is the argmax of one banded forward from time 0 over
    the whole rolled-out sequence with only frame t masked: the ring cache, the uncached window and its time
    offset (chunk phase 2 here) agree with the model's own definition of a long sequence."""
    g, W, T, B = genie(blocks=2, time_positions="rope", tokenizer_window=2), 4, 11, 2
    ctx = jax.random.randint(jax.random.key(0), (B, 2, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (B, T - 1), 0, 4)
    a_BTA, _ = g.frame_conditioning({"latent_actions": jnp.pad(acts, ((0, 0), (1, 0)))})
    ts = np.arange(W, T)  # every frame past the first window
    forward = jax.jit(lambda i, m, a: g.dynamics(i, m, a, 0, W))
    for cache in (True, False):
        r = Rollout(g, W, SampleOptions(steps=1, temperature=0.0, cache=cache))
        ids = r.run(ctx, acts, jax.random.key(2), num_frames=T - 2)
        mask = jnp.broadcast_to((np.arange(T)[None, :] == ts[:, None])[:, None, :, None], (len(ts), B, T, 16))
        logits = forward(jnp.tile(ids, (len(ts), 1, 1)), mask.reshape(-1, T, 16), jnp.tile(a_BTA, (len(ts), 1, 1)))
        want = np.asarray(logits.argmax(-1)).reshape(len(ts), B, T, 16)
        for i, t in enumerate(ts):
            np.testing.assert_array_equal(np.asarray(ids[:, t]), want[i, :, t], err_msg=f"frame {t}, cache {cache}")


def test_rollout_conditions_each_frame_on_the_action_training_pairs_with_it():
    """Greedy one-step MaskGIT from frames < t must be the argmax of training's logits for frame t (fully masked)
    under training's own conditioning: an off-by-one between sampler and training fails it, cached or not."""
    g, T, B = genie(blocks=1), 3, 2
    ids = jax.random.randint(jax.random.key(0), (B, T, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (B, T - 1), 0, 4)  # acts[:, t-1] leads to frame t
    a_BTA, _ = g.frame_conditioning({"latent_actions": jnp.pad(acts, ((0, 0), (1, 0)))})  # as training builds it
    ts = np.arange(1, T)  # one forward: a copy of the batch per frame t, only frame t masked
    mask = jnp.broadcast_to((np.arange(T)[None, :] == ts[:, None])[:, None, :, None], (len(ts), B, T, 16))
    logits = g.dynamics(jnp.tile(ids, (len(ts), 1, 1)), mask.reshape(-1, T, 16), jnp.tile(a_BTA, (len(ts), 1, 1)))
    want = np.asarray(logits.argmax(-1)).reshape(len(ts), B, T, 16)
    for cache in (True, False):
        r = Rollout(g, T, SampleOptions(steps=1, temperature=0.0, cache=cache))
        for i, t in enumerate(ts):
            got = np.asarray(r.run(ids[:, :t], acts[:, :t], jax.random.key(2), num_frames=1))[:, t]
            np.testing.assert_array_equal(got, want[i, :, t], err_msg=f"frame {t}, cache {cache}")
    # Genie.generate (one window, in one jitted loop) gives Rollout's tokens for the same actions and key
    opts = SampleOptions(steps=2, temperature=1.0)  # drawn tokens: both must fold the key in by frame alike
    gen = g.generate(ids[:, :1], a_BTA, jax.random.key(5), opts)
    ref = Rollout(g, T, opts).run(ids[:, :1], acts, jax.random.key(5), num_frames=T - 1)
    np.testing.assert_array_equal(np.asarray(gen), np.asarray(ref))


@pytest.mark.parametrize("cache", [True, False])
def test_sampler_returns_its_context_and_conditions_on_every_context_frame(cache):
    """The context comes back unchanged, and the frames after it depend on each of its frames: rollouts
    from contexts that differ in one frame differ under the same draws (a sampler that dropped or shifted a
    context frame, e.g. a prefill that skipped one, would give some equal)."""
    g, ctx_len = genie(), 3
    ctx = jax.random.randint(jax.random.key(0), (2, ctx_len, 16), 0, 16)
    acts = jax.random.randint(jax.random.key(1), (2, ctx_len + 2), 0, 4)
    r = Rollout(g, 5, SampleOptions(steps=4, temperature=1.0, cache=cache))  # random weights: argmax is flat

    def run(c):
        return np.asarray(r.run(c, acts, jax.random.key(3), num_frames=3))

    out = run(ctx)
    np.testing.assert_array_equal(out[:, :ctx_len], ctx)
    for c in range(ctx_len):
        other = ctx.at[:, c].set((ctx[:, c] + 1 + c) % 16)  # every token of context frame c changed
        assert (run(other)[:, ctx_len:] != out[:, ctx_len:]).any(), f"context frame {c} is ignored"


def test_fixed_seed_gives_identical_samples():
    g = genie()
    _, a = rollout(g, True, seed=7)
    _, b = rollout(g, True, seed=7)
    _, c = rollout(g, True, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    _, d = rollout(g, True, temperature=0.0, seed=1)
    _, e = rollout(g, True, temperature=0.0, seed=2)
    np.testing.assert_array_equal(d, e)  # argmax ignores the seed


def test_psnr_ssim_against_hand_computed_values():
    x = np.zeros((2, 3, 8, 8, 3), np.float32)
    psnr, ssim = psnr_ssim(x + 0.5, x + 0.6)  # MSE 0.01 → 20 dB
    np.testing.assert_allclose(psnr, 20.0, atol=1e-4)
    np.testing.assert_allclose(psnr_ssim(x + 0.3, x + 0.3)[1], 1.0, atol=1e-6)
    assert ssim.shape == (2, 3) and np.all(ssim < 1.0)


def test_eval_summary_paired_differences_and_delta_psnr_with_bootstrap_intervals():
    """The summary ``jasmine eval`` writes, from per-clip scores chosen by hand (B = 4 episodes, T = 3)."""
    psnr = {
        "model": np.array([[50, 20, 22], [50, 24, 26], [50, 18, 20], [50, 26, 28.0]]),
        "random_actions": np.array([[50, 19, 20], [50, 22, 25], [50, 18, 19], [50, 23, 26.0]]),
        "tokenizer": np.full((4, 3), 30.0),
        "copy_last": np.array([[50, 21, 20], [50, 22, 21], [50, 20, 19], [50, 23, 22.0]]),
        "copy_last_tokens": np.array([[30, 20, 19], [30, 21, 20], [30, 19, 18], [30, 22, 21.0]]),
    }
    ssim = {k: v / 100 for k, v in psnr.items()}
    res = summarise_rollouts(psnr, ssim, context=1, delta_t=2)
    assert res["model_minus_copy_last_tokens"]["psnr"]["mean"] == pytest.approx(23.0 - 20.0)
    assert res["mean_generated"]["model"]["psnr"]["mean"] == pytest.approx(23.0)
    diff = res["model_minus_copy_last"]["psnr"]  # per episode: 0.5, 3.5, -0.5, 4.5
    assert diff["mean"] == pytest.approx(2.0) and -0.5 <= diff["lo"] < 2.0 < diff["hi"] <= 4.5
    delta = res["delta_psnr_t2"]  # frame 2: 2, 1, 1, 2 → mean 1.5, and a bootstrap mean stays in [1, 2]
    assert delta["mean"] == pytest.approx(1.5) and 1.0 <= delta["lo"] < 1.5 < delta["hi"] <= 2.0
    assert res["per_frame"]["tokenizer"]["psnr"]["lo"] == [30.0] * 3  # no spread, no interval
    assert summarise_rollouts(psnr, ssim, context=1, delta_t=2) == res  # deterministic resamples


def test_the_token_copy_baseline_repeats_the_last_context_frames_tokens():
    from jasmine.eval.evaluate import copy_last_ids

    ids = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    out = copy_last_ids(ids, 2)
    np.testing.assert_array_equal(out[:, :2], ids[:, :2])
    np.testing.assert_array_equal(out[:, 2:], np.repeat(ids[:, 1:2], 3, axis=1))
    assert ids[0, 4, 0] == 12  # the input is left as it was


def test_bad_sampling_values_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--context 4 must be shorter than the rollout \(--frames 4"):
        check_lengths(4, 4, 16)
    with pytest.raises(ValueError, match="--context 16 must be between 1 and the model's seq_len - 1"):
        check_lengths(16, 20, 16)
    g = genie()
    clips = {"frames": np.zeros((2, 5, 16, 16, 3), np.uint8)}
    with pytest.raises(ValueError, match="action id 9 is outside the codebook of 4 actions"):
        choose_actions("fixed:9", g, clips, np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected 4 action ids"):
        choose_actions("list:1,2", g, clips, np.random.default_rng(0))
    ids = choose_actions("list:0,1,2,3", g, clips, np.random.default_rng(0))
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3]] * 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_genie(tmp_path / "nope")


@pytest.mark.heavy
def test_demo_pipeline_runs_end_to_end_and_reuses_stages(micro_demo, capsys):
    from jasmine.demo import DemoArgs, demo

    out, res = micro_demo
    for path in (
        "data/metadata.json",
        "inspect/contact_sheet.png",
        "tokenizer/config.json",
        "lam/config.json",
        "dynamics/config.json",
        "eval/report.md",
        "eval/psnr_ssim.png",
        "eval/rollouts.gif",
    ):
        assert (out / path).exists(), path
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    base = {"model", "random_actions", "key_mapped", "tokenizer", "copy_last", "copy_last_tokens"}  # data has actions
    assert set(metrics["per_frame"]) - {"swapped_action"} == base
    assert metrics["split"] == "test" and len(set(metrics["per_clip"]["episode"])) == metrics["clips"]
    per_clip = {k: np.asarray(v) for k, v in metrics["per_clip"]["psnr"].items()}  # eval's Δ4PSNR is per clip ...
    np.testing.assert_allclose(
        metrics["delta_psnr_t4"]["mean"], (per_clip["model"][:, 4] - per_clip["random_actions"][:, 4]).mean()
    )
    assert metrics["delta_psnr_t4"]["lo"] <= metrics["delta_psnr_t4"]["mean"] <= metrics["delta_psnr_t4"]["hi"]
    # ... and per clip, eval's model and copy-last scores are those of rollouts redone here from the run, the
    # same held-out clips and the same keys, scored with a PSNR written out here (not eval's functions)
    from jasmine.sample.clips import load_genie, read_clips
    from jasmine.sample.rollout import Rollout, SampleOptions

    cfg, g = load_genie(out / "dynamics")
    clips = read_clips(g, out / "data", "test", metrics["clips"], metrics["frames"], 0, cfg.image_size)
    assert clips["episode"].tolist() == metrics["per_clip"]["episode"]
    opts = SampleOptions(steps=metrics["steps"], temperature=metrics["temperature"], ordinal=metrics["ordinal"])
    roll, gt = Rollout(g, cfg.seq_len, opts), clips["frames"].astype(np.float64) / 255.0
    for lo in range(0, metrics["clips"], 8):
        ids = roll.encode(clips["frames"][lo : lo + 8])
        acts = g.infer_actions(jnp.asarray(clips["frames"][lo : lo + 8]))
        video = roll.decode(roll.run(ids[:, :1], acts, jax.random.key(lo), num_frames=metrics["frames"] - 1))
        for name, v in (("model", video), ("copy_last", np.repeat(gt[lo : lo + 8, :1], metrics["frames"], 1))):
            mse = ((np.clip(np.asarray(v, np.float64), 0, 1) - gt[lo : lo + 8]) ** 2).mean(axis=(2, 3, 4))
            psnr = 10 * np.log10(1.0 / np.maximum(mse, (1 / 255) ** 2 / 12))  # capped at uint8 rounding noise
            np.testing.assert_allclose(per_clip[name][lo : lo + 8, 1:], psnr[:, 1:], atol=2e-3, err_msg=name)
    copy = per_clip["copy_last"]  # the copy-last baseline repeats the context frame
    assert (copy[:, 0] > 58).all() and metrics["tokenizer_codes"]["codes_used"] >= 1
    assert "Δ4PSNR" in (out / "eval" / "report.md").read_text()
    np.testing.assert_allclose(  # play's codes for the real actions, paired against random codes per clip
        metrics["key_mapped_minus_random"]["psnr"]["mean"],
        (per_clip["key_mapped"][:, 1:] - per_clip["random_actions"][:, 1:]).mean(),
        rtol=1e-6,
    )
    latent, shares = metrics["latent_actions"], np.asarray(metrics["random_action_shares"])
    assert ("swapped_action" in per_clip) == ((shares > 0).sum() >= 2)  # GenieRedux's Δt needs two codes in use
    if "swapped_action" in per_clip:  # only the action into frame t differs
        np.testing.assert_allclose(
            metrics["delta_psnr_t4_swap"]["mean"], (per_clip["model"][:, 4] - per_clip["swapped_action"][:, 4]).mean()
        )
        np.testing.assert_array_equal(per_clip["model"][:, :4], per_clip["swapped_action"][:, :4])
    assert shares.sum() == pytest.approx(1) and shares.tolist() == latent["train_code_share"]
    assert latent["raw"]["ami"]["null_p99"] >= latent["raw"]["ami"]["null_p95"] and latent["share_split"] == "train"
    assert "AMI, effective" in (out / "eval" / "report.md").read_text()
    real = metrics["steering"]["real_directions"]  # the real game's way, over as many frames as a key is held
    assert real and {d["horizon"] for d in real.values()} == {metrics["frames"] - metrics["context"]}
    assert f"each key held {metrics['frames'] - metrics['context']} frames" in (out / "eval" / "report.md").read_text()
    capsys.readouterr()
    demo(DemoArgs(out=out, preset="micro"))
    log = capsys.readouterr().out
    for stage in ("data", "tokenizer", "lam", "dynamics"):
        assert f"[demo] {stage}: reusing" in log


def test_teacher_forced_clean_context_masks_frame_t_after_clean_frames(micro_demo):
    from jasmine.eval.teacher import teacher_forced_sums
    from jasmine.models.dynamics import token_terms
    from jasmine.sample.clips import read_clips

    out, metrics = micro_demo
    tf = metrics["teacher_forced"]  # eval reports it for MaskGIT
    assert tf["ratios"] == [0.9, 0.5, 0.25, 0.1]
    parts = ("clean", "masked", "masked_minus_clean")
    assert all(np.isfinite(tf[c][str(r)]["mean"]) for c in parts for r in tf["ratios"])
    cfg, genie = load_genie(out / "dynamics")
    clips = read_clips(genie, out / "data", "test", 2, cfg.seq_len, 0, cfg.image_size)
    ids = np.asarray(Rollout(genie, cfg.seq_len, SampleOptions()).encode(clips["frames"]))
    sums = teacher_forced_sums(genie, clips, ids, jax.random.key(0), ratios=(1.0,))  # ratio 1: all of frame t
    # the same by hand: frames < t as they are, frame t all masked, nothing after t given at all
    a = genie.frame_conditioning({k: jnp.asarray(clips[k]) for k in ("frames", "actions")})[0]
    graphdef, state = nnx.split(genie.dynamics)

    @jax.jit
    def frame_ce(ids_BTN, mask_BTN, a_BTA):
        return token_terms(nnx.merge(graphdef, state)(ids_BTN, mask_BTN, a_BTA), ids_BTN, genie.dynamics.digits)[0]

    B, T, N = ids.shape
    expect = sum(
        np.asarray(frame_ce(ids[:, : t + 1], jnp.zeros((B, t + 1, N), bool).at[:, t].set(True), a[:, : t + 1]))[
            :, t
        ].sum(-1)
        for t in range(1, T)
    )
    np.testing.assert_allclose(sums["clean/1.0"][:, 0], expect, rtol=1e-5)
    assert (sums["clean/1.0"][:, 1] == (T - 1) * N).all() and (sums["masked/1.0"][:, 1] == (T - 1) * N).all()
    assert (sums["masked/1.0"][:, 0] != sums["clean/1.0"][:, 0]).all()  # masked context: another regime


def test_sample_command_writes_videos_and_metrics(micro_demo):
    from jasmine.sample.command import SampleArgs, sample

    out, _ = micro_demo
    res = sample(
        SampleArgs(
            run=out / "dynamics", data=out / "data", context=1, frames=6, actions="random", steps=2, out=out / "samples"
        )
    )
    stem = "sample_test_c1_f6_random_seed0"
    assert (out / "samples" / f"{stem}.gif").stat().st_size > 0
    assert (out / "samples" / f"{stem}.mp4").stat().st_size > 0
    saved = json.loads((out / "samples" / f"{stem}.json").read_text())
    assert len(saved["per_frame"]["psnr"]) == 6 and saved["per_frame"]["psnr"][0] == res["per_frame"]["psnr"][0]
    with pytest.raises(ValueError, match="sampling needs a dynamics run"):
        load_genie(out / "tokenizer")
    (out / "empty_run").mkdir()
    (out / "empty_run" / "config.json").write_text((out / "dynamics" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no dynamics checkpoint"):
        load_genie(out / "empty_run")


def test_bench_sample_reports_speed_up_and_its_pass_time_bound(capsys):
    from jasmine.bench import BenchSampleArgs, bench_sample

    res = bench_sample(BenchSampleArgs(preset="micro", frames=2, batch_sizes=(1,), steps=25))
    out = capsys.readouterr().out
    assert "25 MaskGIT steps (16 change tokens)" in out and "16 one-frame passes + 1" in out
    assert set(res) == {1} and all(res[1][k] > 0 for k in ("cached", "uncached", "bound"))
    assert "cache speed-up" in out and "pass-time bound" in out


def test_bench_play_splits_a_frame_into_passes_and_their_weight_streaming(capsys):
    import jax
    from flax import nnx

    from jasmine.bench.play import BenchPlayArgs, _play_game, bench_play

    res = bench_play(BenchPlayArgs(preset="micro", steps=3, sampling_steps=3, websocket=False, against="bfloat16"))
    b = res["breakdown"]
    assert res["against"]["dtype"] == "bfloat16" and res["against"]["ratio"] > 0  # timed in this process
    d = res["decode"]  # the micro tokenizer's 4-frame chunks, decoded as play does and again whole
    assert d["chunk"] == 4 and min(d["cached_ms"], d["whole_chunk_ms"], d["whole_chunk_last_ms"]) > 0
    assert b["passes"] == 3  # 3 MaskGIT steps over 16 tokens each fix some; the cache write waits (settle)
    f = res["frame_time"]  # ... after the frame is out: back to back, a frame takes both
    assert 0 < f["settle_median_ms"] and f["median_ms"] > res["in_process"]["median_ms"]
    game, _ = _play_game(BenchPlayArgs(preset="micro"))
    dyn = nnx.merge(game.roll.graphdef, game.roll.state).dynamics
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(dyn, nnx.Param)))
    assert b["weight_mib"] == pytest.approx(n_bytes / 2**20) and b["bandwidth_gbs"] > 0
    assert b["weight_streaming_ms"] == pytest.approx(3 * n_bytes / (b["bandwidth_gbs"] * 1e9) * 1e3)
    assert b["matmul_ms"] == pytest.approx(3 * 2 * (n_bytes / 4) * 17 / (b["matmul_peak_gflops"] * 1e9) * 1e3)
    assert 0 < b["dynamics_ms"] <= res["in_process"]["median_ms"] * 1.5
    assert b["thin_matmul_rows"] == 16 + 1 and b["thin_matmul_ms"] > 0  # a frame's tokens + the action token
    out = capsys.readouterr().out
    assert "steps=3" in out and "(3 passes," in out and "of weights: at" in out and "matmul peak" in out
    assert "17 rows by each of the" in out and "dynamics computing in float32" in out and "against bfloat16" in out
    g16, _ = _play_game(BenchPlayArgs(preset="micro", dtype="bfloat16"))  # as `jasmine play --dtype bfloat16`
    w16 = jax.tree.leaves(nnx.state(nnx.merge(g16.roll.graphdef, g16.roll.state).dynamics, nnx.Param))
    assert g16.dtype == "bfloat16" and game.dtype == "float32" and sum(x.nbytes for x in w16) == n_bytes // 2
    assert "decoding in the tokenizer's 4-frame chunks" in out and "then writing the frame into the caches" in out
    assert _play_game(BenchPlayArgs(preset="micro", dynamics="causal"))[0].family == "causal"


def _play_rows(run):
    """(rows of a cached pass's matmuls in `bench play`'s breakdown, tokens per frame) of a run."""
    from flax import nnx

    from jasmine.bench.play import BenchPlayArgs, _play_game, bench_play

    res = bench_play(BenchPlayArgs(run=run, steps=2, websocket=False))
    game, _ = _play_game(BenchPlayArgs(run=run))
    return res["breakdown"]["thin_matmul_rows"], nnx.merge(game.roll.graphdef, game.roll.state).tokens_per_frame


@pytest.mark.heavy(later=True)
def test_causal_demo_sample_and_bench_share_the_tools(micro_demo, capsys):
    from jasmine.bench import BenchSampleArgs, bench_sample
    from jasmine.demo import DemoArgs, demo
    from jasmine.eval.evaluate import EvalArgs, evaluate
    from jasmine.sample.command import SampleArgs, sample

    out, _ = micro_demo
    capsys.readouterr()
    res = demo(DemoArgs(out=out, preset="micro", dynamics="causal"))  # reuses data, tokenizer and LAM
    log = capsys.readouterr().out
    assert "[demo] tokenizer: reusing" in log and "[demo] dynamics: training into" in log
    assert res["dynamics"] == "causal" and res["steps"] is None and (out / "eval-causal" / "report.md").exists()
    assert "by the causal dynamics" in (out / "eval-causal" / "report.md").read_text()
    assert (out / "dynamics" / "config.json").exists()  # the MaskGIT run is untouched
    saved = sample(SampleArgs(run=out / "dynamics-causal", data=out / "data", frames=6, top_k=3, out=out / "s-causal"))
    assert saved["dynamics"] == "causal" and saved["top_k"] == 3
    with pytest.raises(ValueError, match="--steps is a MaskGIT option"):
        evaluate(EvalArgs(run=out / "dynamics-causal", data=out / "data", clips=2, frames=6, steps=8))
    r = bench_sample(BenchSampleArgs(preset="micro", frames=2, batch_sizes=(1,), dynamics="causal"))
    text = capsys.readouterr().out
    assert "17 one-slot passes" in text and "MaskGIT (25 steps, cached) beside it" in text
    assert all(r[1][k] > 0 for k in ("cached", "uncached", "maskgit_cached"))
    assert _play_rows(out / "dynamics-causal") == (1, 16)  # a cached pass runs one slot, not a frame


@pytest.mark.heavy(later=True)
def test_diffusion_demo_sample_eval_and_bench_share_the_tools(micro_demo, capsys):
    from jasmine.bench import BenchSampleArgs, bench_sample
    from jasmine.demo import DemoArgs, demo
    from jasmine.eval.evaluate import EvalArgs, evaluate
    from jasmine.sample.command import SampleArgs, sample

    out, _ = micro_demo
    capsys.readouterr()
    res = demo(DemoArgs(out=out, preset="micro", dynamics="diffusion"))  # trains an MAE; reuses data and LAM
    log = capsys.readouterr().out
    assert "[demo] mae: training into" in log and "[demo] lam: reusing" in log
    assert res["dynamics"] == "diffusion" and res["steps"] == 16 and res["context_noise"] == 0.1
    assert res["tokenizer_codes"] is None and set(res["per_frame"]) - {"swapped_action"} == {
        "model",
        "random_actions",
        "key_mapped",
        "tokenizer",
        "copy_last",
        "copy_last_tokens",
    }
    report = (out / "eval-diffusion" / "report.md").read_text()
    assert "16 denoising steps" in report and "continuous latents (MAE)" in report
    saved = sample(
        SampleArgs(
            run=out / "dynamics-diffusion",
            data=out / "data",
            frames=6,
            steps=2,
            context_noise=0.3,
            out=out / "s-diffusion",
        )
    )
    assert saved["dynamics"] == "diffusion" and saved["steps"] == 2 and saved["context_noise"] == 0.3
    for kw, why in [
        (dict(steps=0), "--steps must be >= 1 denoising step"),
        (dict(temperature=0.0), "--temperature: token sampling option"),
        (dict(context=6), "--context 6 must be shorter than the rollout"),
    ]:
        with pytest.raises(ValueError, match=why):
            evaluate(EvalArgs(run=out / "dynamics-diffusion", data=out / "data", clips=2, frames=6, **kw))
    with pytest.raises(ValueError, match="--context-noise is a diffusion option"):
        evaluate(EvalArgs(run=out / "dynamics", data=out / "data", clips=2, frames=6, context_noise=0.2))
    r = bench_sample(BenchSampleArgs(preset="micro", frames=2, batch_sizes=(1,), dynamics="diffusion", steps=3))
    text = capsys.readouterr().out
    assert "3 denoising steps" in text and "MaskGIT (25 steps, cached) beside it" in text
    assert all(r[1][k] > 0 for k in ("cached", "uncached", "maskgit_cached"))
    rows, n = _play_rows(out / "dynamics-diffusion")
    assert rows == n + 2  # a frame's latents, its action and its noise level


def test_demo_refuses_a_stage_run_trained_with_another_config_and_leaves_it(micro_demo, monkeypatch):
    """A re-run whose dynamics recipe changed (as the CoinRun demo's steps did) names the run and stops."""
    from jasmine import demo as D

    out = micro_demo[0]
    before = {p: p.stat().st_mtime_ns for p in (out / "dynamics").rglob("*")}
    made = D.dynamics_config
    monkeypatch.setattr(D, "dynamics_config", lambda args, fields: replace(made(args, fields), steps=99))
    with pytest.raises(ValueError, match=r"dynamics holds a dynamics run with another config"):
        D.demo(D.DemoArgs(out=out, preset="micro"))
    assert {p: p.stat().st_mtime_ns for p in (out / "dynamics").rglob("*")} == before  # untouched


def test_demo_refuses_to_regenerate_data_its_runs_trained_on(micro_demo, tmp_path):
    """Data made with other arguments (an older jasmine's demo) is never replaced under runs trained on it."""
    import shutil

    from jasmine.demo import DemoArgs, demo

    out = tmp_path / "demo"
    for part in ("data", "tokenizer"):
        shutil.copytree(micro_demo[0] / part, out / part)
    meta = out / "data" / "metadata.json"
    old = json.loads(meta.read_text())
    old["generator"]["args"]["seed"] = 7  # made with another seed
    meta.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="tokenizer trained on it"):
        demo(DemoArgs(out=out, preset="micro"))
    assert json.loads(meta.read_text()) == old  # untouched


def test_a_run_samples_in_bf16_on_request_close_to_its_own_float32(micro_demo, tmp_path):
    """``--dtype bfloat16`` (play, sample, eval, bench play): the weights stored in bf16 and the matmuls in bf16,
    the logits still float32; greedy rollouts mostly pick the float32 model's tokens; eval records the dtype."""
    from jasmine.eval.evaluate import EvalArgs, evaluate
    from jasmine.models.linear import Linear

    out, metrics = micro_demo
    assert metrics["dtype"] == "float32"  # the demo's eval: the run's own (auto: float32 on CPU)
    _, g32 = load_genie(out / "dynamics")
    cfg, g16 = load_genie(out / "dynamics", "bfloat16")
    assert load_genie(out / "dynamics", "float32")[1] is not None
    for g, dt in ((g32, jnp.float32), (g16, jnp.bfloat16)):
        floats = [x for x in jax.tree.leaves(nnx.state(g, nnx.Param)) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == dt for x in floats)
        assert jnp.dtype(dt) in {jnp.dtype(m.dtype) for _, m in nnx.iter_graph(g) if isinstance(m, Linear)}
    n = g32.tokens_per_frame
    ctx = jax.random.randint(jax.random.key(0), (2, 2, n), 0, g32.tokenizer.cfg.vocab_size)
    acts = jax.random.randint(jax.random.key(1), (2, 7), 0, 2)
    ids = [
        np.asarray(
            Rollout(g, cfg.seq_len, SampleOptions(steps=2, temperature=0.0)).run(
                ctx, acts, jax.random.key(3), num_frames=6
            )
        )
        for g in (g32, g16)
    ]
    assert (ids[0] == ids[1]).mean() >= 0.8, (ids[0] != ids[1]).mean()
    res = evaluate(
        EvalArgs(run=out / "dynamics", data=out / "data", clips=2, frames=4, gifs=1, action_transitions=64,
                 permutations=10, teacher_forced=False, dtype="bfloat16", out=tmp_path, steps=2, delta_t=2)
    )  # fmt: skip
    assert res["dtype"] == "bfloat16" and "computed in bfloat16" in (tmp_path / "report.md").read_text()
