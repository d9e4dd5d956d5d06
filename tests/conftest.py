"""Shared fixtures: small synthetic datasets whose pixels encode (episode, frame index)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Reuse XLA compilations across tests and their subprocesses (same tiny models compile often).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/jasmine-test-jax-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tests run tiny programs, so compiling dominates: XLA:CPU without LLVM optimisation and with its classic
# (non-MLIR) fusion emitters compiles a train step ~5x faster and an eager op ~2x, and runs it ~3x slower.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def xla_env(devices: int) -> dict[str, str]:
    """The environment for a subprocess with ``devices`` CPU devices (and this suite's compile flags)."""
    return {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"}


FRAME_SHAPE = (8, 8, 3)


def _micro_models():
    from jasmine.models.dynamics import DynamicsConfig
    from jasmine.models.lam import LAMConfig
    from jasmine.models.tokenizer import TokenizerConfig

    tok = TokenizerConfig(
        patch_size=4, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8, num_latents=16
    )
    lam = LAMConfig(
        patch_size=8,
        model_dim=32,
        ffn_dim=64,
        num_blocks=1,
        num_heads=2,
        latent_dim=8,
        num_latents=4,
        dead_code_reset_steps=0,
    )
    return tok, lam, DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2)


# The models most tests use on 16x16 frames (one set, so their compiled programs are shared across test files).
MICRO_TOK, MICRO_LAM, MICRO_DYN = _micro_models()


def synthetic_episode(episode: int, length: int, frame_shape=FRAME_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose channel 0 is the frame index and channel 1 the episode id; actions = t % 7."""
    t = np.arange(length)
    frames = np.zeros((length, *frame_shape), np.uint8)
    frames[..., 0] = (t % 256)[:, None, None]
    frames[..., 1] = episode
    return frames, (t % 7).astype(np.int32)


def write_synthetic(
    root,
    lengths=(40, 33, 25, 60, 9),
    splits=("train", "val"),
    chunk_len=20,
    actions=True,
    records_per_shard=3,
    frame_shape=FRAME_SHAPE,
    format_version=2,
):
    from jasmine.data.dataset import DatasetWriter  # imported after the XLA environment above is set

    writer = DatasetWriter(
        root,
        frame_shape=frame_shape,
        num_actions=7 if actions else 0,
        source="synthetic",
        generator={"name": "synthetic"},
        chunk_len=chunk_len,
        records_per_shard=records_per_shard,
        format_version=format_version,
    )
    for split in splits:
        for e, n in enumerate(lengths):
            frames, acts = synthetic_episode(e, n, frame_shape)
            writer.add_episode(
                split, frames, acts if actions else None, {"source": "synthetic", "level_seed": e, "episode_id": e}
            )
    return writer.finish()


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A directory every pytest-xdist worker of this run shares (its base temp's parent): see :func:`build_once`."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(root: Path, name: str, build: Callable[[Path], object]) -> Path:
    """``build(root)`` once per test run, whichever worker asks first; the others wait for it, then reuse it.

    Trained runs shared by many tests are built once, not once per module and worker."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if not (root / f".{name}.built").exists():
            build(root)
            (root / f".{name}.built").touch()
    return root


MICRO_RUN = dict(
    steps=3, batch_size=4, seq_len=4, image_size=(16, 16, 3), log_every=1, val_every=3, val_batches=1, ckpt_every=3
)


@pytest.fixture(scope="session")
def runs(shared_root):
    """A synthetic 16x16 dataset (with and without actions, and a 32x32 one), a micro tokenizer and a micro LAM."""
    from jasmine.config import LAMTrainConfig, OptimConfig, TokenizerTrainConfig
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    def build(root):
        write_synthetic(root / "data", lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
        write_synthetic(root / "noact", lengths=(40, 33), frame_shape=(16, 16, 3), actions=False)
        write_synthetic(root / "data32", lengths=(40, 33), frame_shape=(32, 32, 3))
        run = dict(MICRO_RUN, optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0))
        train(
            TokenizerTrainConfig(data=root / "data", out=root / "tok", model=MICRO_TOK, **run),
            COMPONENTS["tokenizer"],
            progress=False,
        )
        train(
            LAMTrainConfig(data=root / "data", out=root / "lam", model=MICRO_LAM, **run),
            COMPONENTS["lam"],
            progress=False,
        )

    return build_once(shared_root / "genie", "runs", build)


@pytest.fixture
def synthetic_dir(tmp_path):
    write_synthetic(tmp_path / "ds")
    return tmp_path / "ds"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``heavy`` (a minute or more on 2 cores) first, ``heavy(later=True)`` ones (which wait for a
    build another heavy test starts) after them: ``make test`` hands tests out one at a time in this order, so
    the long ones start early and the short ones fill the workers' ends."""

    def rank(item):
        mark = item.get_closest_marker("heavy")
        return 2 if mark is None else 1 if mark.kwargs.get("later") else 0

    items.sort(key=rank)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``jasmine ARGS`` run in this process (as ``main`` would from the shell): its exit code, stdout and stderr.

    An exception that ``main`` does not turn into an error message propagates (the shell would show a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    from jasmine.cli import main

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=err)
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return subprocess.CompletedProcess(["jasmine", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def micro_demo(shared_root):
    """The micro demo (CoinRun, tokenizer, LAM, MaskGIT dynamics, eval), run once for every test and worker."""
    from jasmine.demo import DemoArgs, demo

    pytest.importorskip("procgen")
    root = build_once(shared_root / "demo", "demo", lambda r: demo(DemoArgs(out=r / "demo", preset="micro")))
    return root / "demo", json.loads((root / "demo" / "eval" / "metrics.json").read_text())


def _small_run():
    from jasmine.config import OptimConfig

    return dict(steps=6, batch_size=4, seq_len=4, image_size=(16, 16, 3), log_every=1, val_every=3, val_batches=1,
                ckpt_every=3, optim=OptimConfig(lr=3e-3, warmup_steps=2, decay_fraction=0.0))  # fmt: skip


SMALL_RUN = _small_run()  # the single-component training runs of test_train and test_mae
