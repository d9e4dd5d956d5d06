"""The one training loop. Every component (tokenizer, LAM, dynamics) runs through ``train``.

Per step: host batch → global array sharded over the mesh → jitted step (donated state):
loss and grads of the trainable params, AdamW update, the component's post-update hook.
The RNG of step s is ``fold_in(key(seed), s)``, so a resumed run draws the same numbers.

A run continues from a checkpoint of its own (``--resume``, the latest) or of another run
(``--init-from RUN --init-step S``, into a new ``--out``). Either way the config must match
but for the fields in ``RESUMABLE_CHANGES``, and a new ``--steps`` must not change the
learning rate of any step already taken (see ``jasmine.train.optim``): extending a WSD run
from its stable phase equals the run started with the larger budget.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jasmine import config as C
from jasmine.data.dataset import DataError
from jasmine.data.loader import make_loader
from jasmine.data.records import write_text_atomic
from jasmine.train.checkpoint import CheckpointCorrupt, Checkpointer, CheckpointMismatch
from jasmine.train.components import Component
from jasmine.train.distributed import initialize
from jasmine.train.logging import MetricsLogger, read_metrics
from jasmine.train.mesh import global_batch, mesh_for, replicated
from jasmine.train.optim import (
    decay_start,
    first_changed_step,
    lr_schedule,
)
from jasmine.train.runs import checkpoint_steps, resolve_step, restore_state
from jasmine.train.step import _bind, _eval_step, count_params, setup
from jasmine.viz import frame_grid

# Fields that may differ between a run's saved config and the one it continues with.
RESUMABLE_CHANGES = {
    "steps",
    "resume",
    "init_from",
    "init_step",
    "log_every",
    "val_every",
    "val_batches",
    "ckpt_every",
    "keep_last",
    "keep_every",
    "num_workers",
    "read_threads",
    "wandb",
    "data",
    "out",
    "sharding",
    "mesh",
    "distributed",
}


class _StopRequest:
    """SIGTERM/SIGINT become a flag checked between steps (``stop_at``); a second Ctrl-C stops at once.

    Several processes must stop after the same step, or the ones still stepping would wait
    forever for the others: there JAX's preemption sync manager catches SIGTERM (sent by
    the scheduler to any process) and all processes stop at the step it agrees on.
    """

    def __init__(self, processes: int):
        self.signum = None
        self.multi = processes > 1
        self._old = {}

    def __enter__(self):
        for sig in () if self.multi else (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("a second Ctrl-C: stopped at once, without a checkpoint")
        self.signum = signum
        if signum == signal.SIGINT:
            print(
                "\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again stops at once, unsaved)",
                file=sys.stderr,
                flush=True,
            )

    def stop_at(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
        return self.signum is not None

    def __exit__(self, *_):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_run_dir(cfg: C.TrainConfig, out: Path) -> C.TrainConfig | None:
    """Check --out, --resume and --init-from; returns the config of the run continued from (if any)."""
    has_ckpt = bool(checkpoint_steps(out))
    if not cfg.resume and has_ckpt:
        raise ValueError(f"--out {out} already holds checkpoints; pass --resume to continue it or choose a new --out")
    if cfg.init_from is not None and (cfg.resume or has_ckpt):
        raise ValueError(f"--init-from starts a new run: --out {out} must hold no checkpoints, without --resume")
    if cfg.init_step is not None and cfg.init_from is None:
        raise ValueError("--init-step needs --init-from RUN")
    source = Path(cfg.init_from) if cfg.init_from is not None else out if cfg.resume else None
    if source is not None and (source / "config.json").exists():
        saved = C.load_config(source / "config.json")
        if type(saved) is not type(cfg):
            raise ValueError(f"{source / 'config.json'} is a {type(saved).__name__} run, not {type(cfg).__name__}")
        diffs = [d for d in C.diff(saved, cfg) if d.split(":")[0].split(".")[0] not in RESUMABLE_CHANGES]
        if diffs:
            raise ValueError(
                f"continuing {source}: the config does not match the checkpoint's {source / 'config.json'}"
                f":\n  " + "\n  ".join(diffs)
            )
        return saved
    return None


def _check_schedule(cfg: C.TrainConfig, saved: C.TrainConfig, source: Path, start: int) -> None:
    """Refuse a --steps that changes the learning rate of steps already taken; point to the stable phase."""
    changed = first_changed_step(saved.optim, saved.steps, cfg.optim, cfg.steps, start)
    if changed is None:
        return
    old, new = lr_schedule(saved.optim, saved.steps)(changed), lr_schedule(cfg.optim, cfg.steps)(changed)
    stable = [
        s
        for s in checkpoint_steps(source)
        if first_changed_step(saved.optim, saved.steps, cfg.optim, cfg.steps, s) is None
    ]
    hint = (
        f"; continue from checkpoint {stable[-1]} of the stable phase in a new run: --init-from {source} "
        f"--init-step {stable[-1]} --out NEW"
        if stable
        else ""
    )
    raise ValueError(
        f"--steps {cfg.steps} changes the learning rate of steps already taken (step {changed}: "
        f"{float(old):.3g} with --steps {saved.steps}, {float(new):.3g} with --steps {cfg.steps}){hint}"
    )


def train(cfg: C.TrainConfig, component: Component, *, progress: bool = True) -> dict[str, Any]:
    """Train ``component`` as configured; returns the last train and val metrics and the run dir."""
    if cfg.data is None or cfg.out is None:
        raise ValueError("--data and --out are required")
    initialize(cfg.distributed)  # before anything touches a device
    pidx, pcount = jax.process_index(), jax.process_count()
    mesh = mesh_for(cfg)
    cfg = component.prepare(cfg)
    C.validate(cfg, mesh.size)
    out = Path(cfg.out)
    saved = _check_run_dir(cfg, out)
    out.mkdir(parents=True, exist_ok=True)

    source = Path(cfg.init_from) if cfg.init_from is not None else out if cfg.resume and checkpoint_steps(out) else None
    # frozen parts (tokenizer, LAM) come from their runs unless a checkpoint supplies them: --resume on a run
    # without a checkpoint yet is a fresh start
    model, state, shardings, step_fn = setup(cfg, component, mesh, pretrained=source is None)
    align = component.align(cfg)
    step = resolve_step(source, cfg.init_step if cfg.init_from is not None else None) if source is not None else 0
    loader = make_loader(
        cfg.data,
        "train",
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        image_shape=cfg.image_size,
        align=align,
        num_workers=cfg.num_workers,
        process_index=pidx,
        process_count=pcount,
        start_batch=step,
        read_threads=cfg.read_threads,
    )  # batch s is a function of s
    data_iter = iter(loader)
    stable_end = decay_start(cfg.optim, cfg.steps)
    ckpt = Checkpointer(
        out / "checkpoints",
        keep_last=cfg.keep_last,
        keep_every=cfg.keep_every,
        keep_steps=(stable_end,) if stable_end < cfg.steps else (),
    )
    start = 0
    if source is not None:
        try:
            state = restore_state(source, cfg, model, step, shardings)
        except (CheckpointMismatch, CheckpointCorrupt):
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint {source}/checkpoints/{step} does not match this model: {e}") from e
        start = int(state["step"])
        _check_schedule(cfg, saved or cfg, source, start)
        if pidx == 0:  # the curves up to the restored step: the source's (--init-from) or the run's own, without the
            # rows logged after that checkpoint, which the resumed run logs again
            rows = [r for r in read_metrics(source, None) if r["step"] <= start]
            write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if pidx == 0:  # only now: a refused resume must leave the run's config as it was
        C.save_config(cfg, out / "config.json")

    eval_fn = _bind(
        jax.jit(_eval_step, static_argnums=(0, 1, 2), out_shardings=replicated(mesh)), component, cfg, model
    )  # metrics and preview rows, replicated: process 0 draws the rows it gathers
    logger = MetricsLogger(out, config=C.to_dict(cfg), wandb=cfg.wandb, enabled=pidx == 0)
    n_params = count_params(state["params"])
    n_frozen = count_params(state["frozen"])
    if pidx == 0 and progress:
        print(
            f"[{component.name}] {n_params / 1e6:.2f}M trainable params"
            + (f", {n_frozen / 1e6:.2f}M frozen" if n_frozen else "")
            + f" | {pcount} process(es), {mesh.size} device(s), mesh dp {mesh.shape['dp']} x fsdp "
            f"{mesh.shape['fsdp']} | run dir {out}"
            + (f" | from {source} step {start}" if source is not None else "")
            + (f" | windows start at multiples of {align} frames" if align > 1 else "")
        )

    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    stopped = None
    t_log, steps_since = time.perf_counter(), 0
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=component.name,
        unit="step",
        dynamic_ncols=True,
        disable=not progress or pidx != 0,
    )
    with _StopRequest(pcount) as stop:
        for step in range(start, cfg.steps):
            batch = global_batch({k: v for k, v in next(data_iter).items() if k in component.batch_keys(cfg)}, mesh)
            state, metrics = step_fn(state, batch)
            steps_since += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                metrics["steps_per_s"] = steps_since / (now - t_log)
                t_log, steps_since = now, 0
                logger.log(done, metrics)
                last_train = metrics
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"loss became {metrics['loss']} at step {done}; see {out / 'metrics.jsonl'}"
                    )
            bar.update()
            if cfg.val_batches and (done % cfg.val_every == 0 or done == cfg.steps):
                last_val = _validate(cfg, eval_fn, state, mesh, logger, out, done, align)
            due = done % cfg.ckpt_every == 0 or done == cfg.steps or done == stable_end
            if due:
                ckpt.save(done, state, force=True)
            if stop.stop_at(done):
                stopped = signal.Signals(stop.signum).name
                if not due:
                    ckpt.save(done, state, force=True)
                break
    bar.close()
    ckpt.close()
    logger.close()
    final_step = int(state["step"])
    if stopped and pidx == 0:
        print(f"[{component.name}] {stopped}: saved checkpoint at step {final_step}; continue with --resume")
    return {
        "train": last_train,
        "val": last_val,
        "step": final_step,
        "run_dir": out,
        "stopped": stopped,
        "params": n_params,
        "state": state,
    }


def _validate(cfg, eval_fn, state, mesh, logger, out: Path, step: int, align: int) -> dict[str, float]:
    try:
        val = make_loader(
            cfg.data,
            "val",
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            image_shape=cfg.image_size,
            align=align,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    except DataError as e:
        warnings.warn(f"validation skipped: {e}", stacklevel=2)
        return {}
    it, sums, rows = iter(val), {}, None
    for _ in range(cfg.val_batches):
        batch_metrics, batch_rows = eval_fn(state, global_batch(next(it), mesh))
        rows = batch_rows if rows is None else rows  # the first batch's
        for k, v in jax.device_get(batch_metrics).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    metrics = {k: v / cfg.val_batches for k, v in sums.items()}
    logger.log(step, metrics, split="val")
    if rows and logger.enabled:
        from PIL import Image

        img = frame_grid([np.asarray(r) for r in rows])
        (out / "samples").mkdir(exist_ok=True)
        Image.fromarray(img).save(out / "samples" / f"val_step{step:07d}.png")
        logger.image(step, "val/preview", img)
    return metrics
