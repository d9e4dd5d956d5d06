"""Shared fixtures: small synthetic datasets whose pixels encode (episode, frame index)."""

from __future__ import annotations

import os

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

import numpy as np
import pytest

from jasmine.data.dataset import DatasetWriter

FRAME_SHAPE = (8, 8, 3)


def synthetic_episode(episode: int, length: int, frame_shape=FRAME_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose channel 0 is the frame index and channel 1 the episode id; actions = t % 7."""
    t = np.arange(length)
    frames = np.zeros((length, *frame_shape), np.uint8)
    frames[..., 0] = (t % 256)[:, None, None]
    frames[..., 1] = episode
    return frames, (t % 7).astype(np.int32)


def write_synthetic(root, lengths=(40, 33, 25, 60, 9), splits=("train", "val"), chunk_len=20, actions=True,
                    records_per_shard=3, frame_shape=FRAME_SHAPE, format_version=2):
    writer = DatasetWriter(root, frame_shape=frame_shape, num_actions=7 if actions else 0, source="synthetic",
                           generator={"name": "synthetic"}, chunk_len=chunk_len, records_per_shard=records_per_shard,
                           format_version=format_version)
    for split in splits:
        for e, n in enumerate(lengths):
            frames, acts = synthetic_episode(e, n, frame_shape)
            writer.add_episode(split, frames, acts if actions else None, {"source": "synthetic", "level_seed": e, "episode_id": e})
    return writer.finish()


@pytest.fixture
def synthetic_dir(tmp_path):
    write_synthetic(tmp_path / "ds")
    return tmp_path / "ds"
