"""Run directories, the interface between stages: the saved train state, configs, restores, provenance.

A run directory holds ``config.json`` and Orbax ``checkpoints/<step>/``. Each checkpoint
is the whole train state (:func:`init_state`). A model's *provenance* is the run, the
checkpoint step and a content hash of its parameters; token datasets and dynamics runs
record it for the tokenizer and LAM they were made with, and refuse a mismatch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jasmine import config as C
from jasmine.train.checkpoint import Checkpointer, abstract
from jasmine.train.optim import lr_schedule, make_optimizer


@dataclass
class Model:
    """A model split into its graph and state: trainable params, frozen params, other variables."""

    graphdef: Any
    params: nnx.State
    frozen: nnx.State
    rest: nnx.State

    @classmethod
    def split(cls, module: nnx.Module, trainable) -> Model:
        return cls(*nnx.split(module, trainable, nnx.Param, ...))

    def merge(self, params=None, frozen=None, rest=None) -> nnx.Module:
        return nnx.merge(
            self.graphdef,
            self.params if params is None else params,
            self.frozen if frozen is None else frozen,
            self.rest if rest is None else rest,
        )


def init_state(model: Model, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """The train state a checkpoint holds: step, params, frozen params, other variables, optimizer, RNG."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": model.params,
        "frozen": model.frozen,
        "rest": model.rest,
        "opt": tx.init(model.params),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def run_config(run_dir: str | Path) -> C.TrainConfig:
    """The config.json of a run directory, with a clear error when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"run directory {run_dir} has no config.json (not a jasmine run, or it never started)")
    return C.load_config(run_dir / "config.json")


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    ckpt = Checkpointer(directory, read_only=True)
    steps = sorted(ckpt.all_steps())
    ckpt.close()
    return steps


def resolve_step(run_dir: str | Path, step: int | None) -> int:
    """``step`` (default: the latest), checked to exist in the run."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"run directory {run_dir} has no checkpoint in {Path(run_dir) / 'checkpoints'}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"run directory {run_dir} has no checkpoint of step {step} (it has {steps})")
    return step


def restore_state(run_dir: str | Path, cfg: C.TrainConfig, model: Model, step: int, shardings=None) -> dict[str, Any]:
    """The train state saved at ``step``, in ``shardings`` (default: all on this process's first device,
    whatever mesh the checkpoint was written from)."""
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, cfg.steps))
    shapes = jax.eval_shape(lambda: init_state(model, tx, cfg.seed))
    if shardings is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), shapes)
    target = abstract(shapes, shardings)
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", read_only=True)
    try:
        return ckpt.restore(step, target)
    finally:
        ckpt.close()


def param_hash(module: nnx.Module) -> str:
    """SHA-256 (hex, first 16 digits) of a module's parameters: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]
    for path, x in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(x)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def provenance(run_dir: str | Path, step: int, module: nnx.Module) -> dict[str, Any]:
    """What made a model: its run directory, checkpoint step and parameter hash."""
    return {"run": str(Path(run_dir).resolve()), "step": int(step), "hash": param_hash(module)}


def describe(prov: dict[str, Any] | None) -> str:
    return "unknown" if not prov else f"{prov.get('run')} step {prov.get('step')} (params {prov.get('hash')})"
