"""The training loop: overfitting, determinism, resume (incl. SIGTERM), config, errors, multi-device."""

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest
import tyro
from conftest import SMALL_RUN, write_synthetic, xla_env
from flax import nnx

from jasmine import config as C
from jasmine.config import OptimConfig, TokenizerTrainConfig
from jasmine.models.tokenizer import TokenizerConfig
from jasmine.presets import PRESETS, preset
from jasmine.train.components import TokenizerComponent, load_run
from jasmine.train.logging import read_metrics
from jasmine.train.loop import train
from jasmine.train.optim import lr_schedule

TOK = TokenizerComponent()
MODEL = TokenizerConfig(
    patch_size=4,
    model_dim=32,
    ffn_dim=64,
    num_blocks=1,
    num_heads=2,
    latent_dim=8,
    num_latents=16,
    dead_code_reset_steps=3,
)


def tiny_cfg(data, out, **kw):
    base = TokenizerTrainConfig(
        data=data,
        out=out,
        model=MODEL,
        **SMALL_RUN,
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ds"
    write_synthetic(root, lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    return root


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=False)
    )


def final_state(run_dir):
    _, model, step = load_run(run_dir)
    return step, nnx.state(model)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_overfitting_one_batch_drives_mse_down_100x(quantizer):
    from jasmine.train.loop import setup
    from jasmine.train.mesh import global_batch, make_mesh

    cfg = tiny_cfg(
        None,
        None,
        steps=200,
        optim=OptimConfig(lr=3e-3, warmup_steps=10, decay_fraction=0.0),
        model=replace(
            MODEL,
            codebook_dropout=0.0,
            num_latents=64,
            latent_dim=16,
            model_dim=64,
            dead_code_reset_steps=5,
            quantizer=quantizer,
        ),
    )
    mesh = make_mesh((1, 1))
    _, state, _, step_fn = setup(cfg, TOK, mesh)
    rng = np.random.default_rng(0)  # each 4x4 patch one of 8 colours: representable by the codebook
    patches = rng.integers(0, 2, (4, 4, 4, 4, 3), dtype=np.uint8) * 255
    frames = patches.repeat(4, axis=2).repeat(4, axis=3)
    batch = global_batch({"frames": frames}, mesh)
    mses = []
    for _ in range(cfg.steps):
        state, metrics = step_fn(state, batch)
        mses.append(float(metrics["mse"]))
    assert mses[-1] < mses[0] / 100, (mses[0], mses[-1])


def test_same_seed_gives_bitwise_identical_runs(data16, tmp_path):
    a = train(tiny_cfg(data16, tmp_path / "a"), TOK, progress=False)
    b = train(tiny_cfg(data16, tmp_path / "b"), TOK, progress=False)
    la = [r["loss"] for r in read_metrics(tmp_path / "a")]
    assert la == [r["loss"] for r in read_metrics(tmp_path / "b")] and len(la) == 6
    assert leaves_equal(a["state"]["params"], b["state"]["params"])
    train(tiny_cfg(data16, tmp_path / "c", seed=1), TOK, progress=False)
    assert [r["loss"] for r in read_metrics(tmp_path / "c")] != la
    assert (tmp_path / "a" / "samples").is_dir() and list((tmp_path / "a" / "tensorboard").iterdir())
    assert [r["step"] for r in read_metrics(tmp_path / "a", "val")] == [3, 6]
    assert {"psnr", "ssim", "mse", "codebook_usage"} <= set(read_metrics(tmp_path / "a", "val")[0])


def test_resume_is_bitwise_exact(data16, tmp_path):
    straight = train(tiny_cfg(data16, tmp_path / "s", steps=6), TOK, progress=False)
    train(tiny_cfg(data16, tmp_path / "r", steps=3), TOK, progress=False)
    resumed = train(tiny_cfg(data16, tmp_path / "r", steps=6, resume=True), TOK, progress=False)
    assert resumed["step"] == 6
    assert leaves_equal(straight["state"]["params"], resumed["state"]["params"])
    assert leaves_equal(straight["state"]["opt"], resumed["state"]["opt"])
    assert leaves_equal(straight["state"]["rest"], resumed["state"]["rest"])  # VQ code ages
    s = [r["loss"] for r in read_metrics(tmp_path / "s")]
    r = [r["loss"] for r in read_metrics(tmp_path / "r")]
    assert s == r
    train(tiny_cfg(data16, tmp_path / "c", steps=6), TOK, progress=False)  # killed after logging steps 4-6 but
    shutil.rmtree(tmp_path / "c" / "checkpoints" / "6")  # before the step-6 checkpoint was complete
    train(tiny_cfg(data16, tmp_path / "c", steps=6, resume=True), TOK, progress=False)
    rows = read_metrics(tmp_path / "c")
    assert [r["step"] for r in rows] == list(range(1, 7)), "every step logged once, none twice after the resume"
    assert [r["loss"] for r in rows] == s


@pytest.mark.heavy
def test_resume_after_sigterm_is_bitwise_exact(data16, tmp_path):
    steps = 40
    straight = train(tiny_cfg(data16, tmp_path / "s", steps=steps, ckpt_every=100, val_every=100), TOK, progress=False)
    run = tmp_path / "r"
    cmd = [
        sys.executable,
        "-m",
        "jasmine.cli",
        "train",
        "tokenizer",
        "--data",
        str(data16),
        "--out",
        str(run),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--seq-len",
        "4",
        "--image-size",
        "16",
        "16",
        "3",
        "--log-every",
        "1",
        "--val-every",
        "100",
        "--ckpt-every",
        "100",
        "--model.patch-size",
        "4",
        "--model.model-dim",
        "32",
        "--model.ffn-dim",
        "64",
        "--model.num-blocks",
        "1",
        "--model.num-heads",
        "2",
        "--model.latent-dim",
        "8",
        "--model.num-latents",
        "16",
        "--model.dead-code-reset-steps",
        "3",
        "--model.quantizer",
        "vq",
        "--optim.lr",
        "3e-3",
        "--optim.warmup-steps",
        "2",
        "--optim.decay-fraction",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(run)) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM: saved checkpoint at step" in out
    interrupted_at, _ = final_state(run)
    assert 5 <= interrupted_at < steps
    subprocess.run(cmd + ["--resume"], check=True, capture_output=True)
    step, state = final_state(run)
    assert step == steps
    assert leaves_equal(straight["state"]["params"], state.filter(nnx.Param))


def test_a_first_ctrl_c_asks_for_a_checkpoint_and_a_second_stops_at_once(capsys):
    import os

    from jasmine.train.loop import _StopRequest

    before = signal.getsignal(signal.SIGINT)
    with _StopRequest(1) as stop:
        assert not stop.stop_at(0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in this thread at its next instruction
        assert stop.stop_at(1) and stop.signum == signal.SIGINT  # the loop saves after this step
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert "Ctrl-C again stops at once" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back


def test_extending_a_wsd_run_from_its_stable_phase_equals_the_longer_run(data16, tmp_path):
    """With decay: a 5-step run (decay from step 3) taken to 10 steps from its stable phase is the 10-step run."""
    wsd = OptimConfig(lr=3e-3, warmup_steps=2, decay_fraction=0.3)
    kw = dict(optim=wsd, ckpt_every=2, val_every=100)
    longer = train(tiny_cfg(data16, tmp_path / "long", steps=10, **kw), TOK, progress=False)
    train(tiny_cfg(data16, tmp_path / "short", steps=5, **kw), TOK, progress=False)
    from jasmine.train.runs import checkpoint_steps

    assert 3 in checkpoint_steps(tmp_path / "short")  # the decay's first step is always kept
    saved = (tmp_path / "short" / "config.json").read_text()
    for _ in range(2):  # refused, and refused again: the refusal leaves the run's config.json as it was
        with pytest.raises(
            ValueError,
            match=r"--steps 10 changes the learning rate of steps already taken \(step 3: .*"
            r"--init-from .*short --init-step 3",
        ):
            train(tiny_cfg(data16, tmp_path / "short", steps=10, resume=True, **kw), TOK, progress=False)
        assert (tmp_path / "short" / "config.json").read_text() == saved
    extended = train(
        tiny_cfg(data16, tmp_path / "ext", steps=10, init_from=tmp_path / "short", init_step=3, **kw),
        TOK,
        progress=False,
    )
    for part in ("params", "opt", "rest", "rng"):
        assert leaves_equal(longer["state"][part], extended["state"][part]), part
    assert [r["loss"] for r in read_metrics(tmp_path / "ext")] == [r["loss"] for r in read_metrics(tmp_path / "long")]
    cosine = replace(wsd, schedule="cosine")  # cosine depends on the budget everywhere: refused
    train(tiny_cfg(data16, tmp_path / "cos", steps=4, **{**kw, "optim": cosine}), TOK, progress=False)
    with pytest.raises(ValueError, match="changes the learning rate"):
        train(tiny_cfg(data16, tmp_path / "cos", steps=8, resume=True, **{**kw, "optim": cosine}), TOK, progress=False)


def test_weight_decay_skips_norms_biases_embeddings_codebooks_and_tokens():
    import jax.numpy as jnp

    from jasmine.models.dynamics import DynamicsConfig
    from jasmine.models.genie import Genie
    from jasmine.models.lam import LAMConfig
    from jasmine.train.optim import make_optimizer

    genie = Genie(
        MODEL,
        DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2),
        (16, 16, 3),
        lam_cfg=LAMConfig(patch_size=8, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2),
        rngs=nnx.Rngs(0),
    )
    params = nnx.state(genie, nnx.Param)
    opt = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    tx = make_optimizer(opt, lr_schedule(opt, 10))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)  # zero gradients
    changed = {
        jax.tree_util.keystr(p): bool((np.asarray(u) != 0).any())
        for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]
    }
    decayed = {p for p, c in changed.items() if c}
    assert decayed and all("'kernel'" in p for p in decayed)
    assert all(c for p, c in changed.items() if "'kernel'" in p)
    for name in ("'embedding'", "'codebook'", "'mask_token'", "'action_token'", "'scale'", "'bias'"):
        assert any(name in p for p in changed) and not any(name in p for p in decayed), name


def test_lr_schedules():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, end_lr=0.0)
    f = lr_schedule(cfg, 100)
    assert float(f(0)) == pytest.approx(0.1) and float(f(9)) == 1.0 and float(f(79)) == 1.0
    assert float(f(80)) == pytest.approx(0.95) and float(f(89)) == pytest.approx(0.5) and float(f(99)) == 0.0
    g = lr_schedule(replace(cfg, schedule="cosine"), 100)
    assert float(g(10)) == pytest.approx(1.0) and float(g(55)) == pytest.approx(0.5, abs=1e-6)
    assert float(g(100)) == pytest.approx(0.0, abs=1e-7)


def test_config_round_trip_and_cli_overrides(tmp_path):
    for name, cfg in PRESETS["tokenizer"].items():
        C.save_config(cfg, tmp_path / f"{name}.json")
        assert C.load_config(tmp_path / f"{name}.json") == cfg
    coinrun = preset("tokenizer", "coinrun")
    assert (coinrun.model.model_dim, coinrun.model.ffn_dim, coinrun.model.num_blocks, coinrun.model.num_heads) == (
        512,
        2048,
        4,
        8,
    )
    assert (coinrun.model.num_latents, coinrun.model.latent_dim, coinrun.batch_size, coinrun.steps) == (
        1024,
        32,
        48,
        300_000,
    )
    assert (coinrun.optim.lr, coinrun.optim.warmup_steps, coinrun.optim.b1, coinrun.optim.b2) == (
        3e-4,
        10_000,
        0.9,
        0.9,
    )
    cfg = tyro.cli(
        TokenizerTrainConfig, default=coinrun, args=["--steps", "7", "--model.patch-size", "8", "--optim.lr", "1e-3"]
    )
    assert (cfg.steps, cfg.model.patch_size, cfg.optim.lr, cfg.model.model_dim) == (7, 8, 1e-3, 512)
    with pytest.raises(ValueError, match="--preset 'huge' does not exist"):
        preset("tokenizer", "huge")


@pytest.mark.parametrize(
    "kw, devices, match",
    [
        ({"model": replace(MODEL, patch_size=5)}, 1, r"--model.patch-size 5 does not divide the 16x16 frames"),
        ({"batch_size": 6}, 4, r"--batch-size 6 is not divisible by the 4 devices"),
        ({"model": replace(MODEL, num_heads=3)}, 1, r"--model.model-dim 32 is not divisible by --model.num-heads 3"),
        ({"val_batches": -1}, 1, r"--val-batches must be >= 0 \(0 = no validation\), got -1"),
        ({"param_dtype": "bfloat16"}, 1, r"(?s)--param-dtype bfloat16: .*no float32 master.*round away.*float32"),
    ],
)
def test_bad_values_are_named(kw, devices, match):
    with pytest.raises(ValueError, match=match):
        C.validate(tiny_cfg(None, None, **kw), devices)


def test_mismatched_checkpoint_and_existing_run_are_clear_errors(data16, tmp_path):
    train(tiny_cfg(data16, tmp_path / "r", steps=3), TOK, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        train(tiny_cfg(data16, tmp_path / "r", steps=3), TOK, progress=False)
    with pytest.raises(ValueError, match=r"(?s)does not match.*model.model_dim: 32 != 64"):
        train(
            tiny_cfg(data16, tmp_path / "r", steps=6, resume=True, model=replace(MODEL, model_dim=64)),
            TOK,
            progress=False,
        )
    (tmp_path / "r" / "config.json").unlink()  # no saved config: the restore itself must fail clearly
    with pytest.raises(ValueError, match="does not match this model"):
        train(
            tiny_cfg(data16, tmp_path / "r", steps=6, resume=True, model=replace(MODEL, model_dim=64)),
            TOK,
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_run(tmp_path)


def test_image_size_must_match_data(data16, tmp_path):
    from jasmine.data.dataset import DataError

    with pytest.raises(DataError, match=r"frames are \[16, 16, 3\].*asks for \[32, 32, 3\]"):
        train(tiny_cfg(data16, tmp_path / "x", image_size=(32, 32, 3)), TOK, progress=False)


@pytest.mark.heavy
def test_four_device_data_parallel_matches_one_device_and_restores_on_one(data16, tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import jax, numpy as np
        from dataclasses import replace
        from test_train import tiny_cfg, TOK, MODEL
        from jasmine.bench import synthetic_batch
        from jasmine.train.loop import setup, train
        from jasmine.train.mesh import global_batch, mesh_for
        assert jax.device_count() == 4
        cfg = tiny_cfg(None, None, model=replace(MODEL, model_dim=64, ffn_dim=256))  # FFN kernels of 64x256 = 2^14
        out, expect = {{}}, {{}}
        for mode, n, mesh_arg in [("dp", 1, ""), ("dp", 4, ""), ("fsdp", 4, ""), ("hybrid", 4, "2x2")]:
            c = replace(cfg, sharding=mode, mesh=mesh_arg)
            mesh = mesh_for(c, n)
            _, state, _, step = setup(c, TOK, mesh)
            split = {{("fsdp", 4): 4, ("hybrid", 4): 2}}.get((mode, n))
            if split:  # large params and both Adam moments are split over fsdp, replicated over dp
                leaves = jax.tree_util.tree_flatten_with_path(state)[0]
                big = [(jax.tree_util.keystr(p), x) for p, x in leaves if x.size >= 2**14]
                assert len(big) >= 3 * 4, [p for p, _ in big]  # 2 FFN kernels x 2 blocks... in params, mu, nu
                for path, x in big:
                    shard = x.addressable_shards[0].data.shape
                    assert int(np.prod(shard)) * split == x.size and len(x.sharding.device_set) == 4, path
                assert any("mu" in p for p, _ in big) and any("nu" in p for p, _ in big)
                small = [x for _, x in leaves if x.ndim and x.size < 2**14]
                assert all(x.addressable_shards[0].data.shape == x.shape for x in small)
                held = jax.tree.leaves((state["params"], state["opt"]))
                expect[mode] = sum(x.nbytes // split if x.size >= 2**14 else x.nbytes for x in held)
            batch = global_batch(synthetic_batch(cfg, ("frames",)), mesh)
            losses = []
            for _ in range(3):
                state, m = step(state, batch)
                losses += [float(m["loss"]), float(m["grad_norm"])]
            out[(mode, n)] = losses, [np.asarray(x) for x in jax.tree.leaves(state["params"])]
        for one, many in [(("dp", 1), ("dp", 4)), (("dp", 1), ("fsdp", 4)), (("dp", 1), ("hybrid", 4))]:
            np.testing.assert_allclose(out[one][0], out[many][0], rtol=1e-5)
            for a, b in zip(out[one][1], out[many][1]):  # Adam amplifies ulp noise where grad ~ 0
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
        from jasmine.bench import bench_train  # its memory report: the fullest device against replication
        dp, fsdp = (bench_train(replace(cfg, sharding=m), TOK, 1) for m in ("dp", "fsdp"))
        assert dp["total_bytes"] == dp["dp_total_bytes"] == fsdp["dp_total_bytes"]
        assert fsdp["params_bytes"] + fsdp["opt_bytes"] == expect["fsdp"] < 0.7 * (dp["params_bytes"] + dp["opt_bytes"])
        train(tiny_cfg({str(data16)!r}, {str(tmp_path / "run")!r}, steps=3), TOK, progress=False)
        print("OK")
    """)
    env = xla_env(4)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    resumed = train(tiny_cfg(data16, tmp_path / "run", steps=5, resume=True), TOK, progress=False)
    assert resumed["step"] == 5 and jax.device_count() == 1


def test_checkpoint_retention_keeps_last_k_plus_every_m(tmp_path):
    from jasmine.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "c", keep_last=2, keep_every=4, use_async=False)
    for step in range(1, 10):
        ckpt.save(step, {"x": np.full((2,), step, np.float32)}, force=True)
    ckpt.close()
    assert sorted(Checkpointer(tmp_path / "c", read_only=True).all_steps()) == [4, 8, 9]
    assert not list((tmp_path / "c").glob("*tmp*"))


def test_wandb_offline_logging(data16, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # installed by `make test` (the wandb extra)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny_cfg(data16, tmp_path / "w", steps=2, wandb=True), TOK, progress=False)
    assert list((tmp_path / "w").rglob("*.wandb")), "no offline wandb run was written"
