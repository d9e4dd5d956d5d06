"""Run directories, the interface between stages: the saved train state, configs, restores, provenance.

A run directory holds ``config.json`` and Orbax ``checkpoints/<step>/``. Each checkpoint
is the whole train state (:func:`init_state`). A model's *provenance* is the run, the
checkpoint step and a content hash of its parameters; token datasets and dynamics runs
record it for the tokenizer and LAM they were made with, and refuse a mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable
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


# Fields that do not enter a step's program (paths, budgets, logging, the schedule's numbers, which the step takes as
# data): :func:`program_config` clears them, so every run of one recipe in a process shares one compiled step.
_OUTSIDE_PROGRAM = {
    "data": None,
    "out": None,
    "steps": 0,
    "seed": 0,
    "resume": False,
    "init_from": None,
    "init_step": None,
    "log_every": 1,
    "val_every": 1,
    "val_batches": 1,
    "ckpt_every": 1,
    "keep_last": 1,
    "keep_every": 0,
    "num_workers": 0,
    "read_threads": 0,
    "wandb": False,
    "distributed": C.DistributedConfig(),
    "tokenizer_step": None,
    "tokenizer_hash": "",
    "lam_step": None,
    "lam_hash": "",
}


def program_config(cfg: C.TrainConfig) -> C.TrainConfig:
    """``cfg`` with the fields that do not change the compiled train and eval steps set to fixed values."""
    names = {f.name for f in dataclasses.fields(cfg)}
    fixed = {k: v for k, v in _OUTSIDE_PROGRAM.items() if k in names}
    for path in ("tokenizer", "lam"):  # only whether they are given matters inside a step
        if getattr(cfg, path, None) is not None:
            fixed[path] = Path(".")
    optim = dataclasses.replace(cfg.optim, lr=0.0, end_lr=0.0, warmup_steps=0, decay_fraction=0.0)
    return dataclasses.replace(cfg, **fixed, optim=optim)


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


# Models restored in this process, on the host, by what identifies them on disk (see restore_model): a sweep or an
# eval loads the same frozen tokenizer and LAM for every run, and an Orbax restore costs far more than a copy.
_RESTORED: OrderedDict[tuple, tuple[Any, tuple]] = OrderedDict()
RESTORED_BYTES = 2 << 30  # the most host memory the restored models kept for reuse may hold


def _fingerprint(run_dir: str | Path, step: int) -> tuple:
    """A run's config and every file of its checkpoint ``step`` (name, size, modification time, inode): a step
    rewritten or a file changed in place gives another fingerprint."""
    run = Path(run_dir).resolve()
    files = []
    for path in sorted((run / "checkpoints" / str(step)).rglob("*")):
        st = path.stat()
        if path.is_file():
            files.append((str(path.relative_to(run)), st.st_size, st.st_mtime_ns, st.st_ino))
    return str(run), step, (run / "config.json").read_bytes(), tuple(files)


def restore_model(
    run_dir: str | Path, cfg: C.TrainConfig, step: int, abstract_model: Callable[[], Model]
) -> nnx.Module:
    """The model of ``run_dir``'s checkpoint ``step`` (its train state restored into ``abstract_model()``), on this
    process's first device. A checkpoint restored before in this process, unchanged on disk, is not read again:
    its arrays are copied from the host (every caller owns its arrays; a train step may donate them)."""
    key = _fingerprint(run_dir, step)
    hit = _RESTORED.get(key)
    if hit is not None:
        _RESTORED.move_to_end(key)
        graphdef, host = hit
        fresh = jax.tree.map(np.array, host)  # a new buffer per call: on CPU a device array may alias its source
        return nnx.merge(graphdef, *jax.device_put(fresh, jax.local_devices()[0]))
    model = abstract_model()
    state = restore_state(run_dir, cfg, model, step)
    parts = (state["params"], state["frozen"], state["rest"])
    leaves = jax.tree.leaves(parts)
    size = sum(x.nbytes for x in leaves)
    if size <= RESTORED_BYTES and all(np.issubdtype(x.dtype, np.number) or x.dtype == bool for x in leaves):
        _RESTORED[key] = (model.graphdef, jax.tree.map(np.array, parts))  # a copy: the caller may donate its arrays
        while sum(sum(x.nbytes for x in jax.tree.leaves(h)) for _, h in _RESTORED.values()) > RESTORED_BYTES:
            _RESTORED.popitem(last=False)
    return model.merge(*parts)


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
