"""Learning-rate schedules (warmup then WSD / cosine / constant) and the AdamW optimizer.

Extending a run: the learning rate of step s is a function of s and of the run's budget
(``--steps``). A resumed run may change ``--steps`` only if no step already taken changes
its learning rate (:func:`first_changed_step`). For WSD that holds for any checkpoint in the
stable phase, which is WSD's point: a run taken from its stable phase to a larger budget is
the run that was started with that budget. The loop keeps the checkpoint at the start of
the decay for this (:func:`decay_start`).

Weight decay applies to matrix weights (``kernel``) only: never to norms, biases,
embeddings, codebooks or learned tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jasmine.config import OptimConfig


def decay_start(cfg: OptimConfig, total_steps: int) -> int:
    """First step of WSD's decay phase (``total_steps`` when there is none).

    The checkpoint of this step (taken after steps [0, decay_start)) is the last one of the
    stable phase. The decay reaches ``end_lr`` at the last step.
    """
    if cfg.schedule != "wsd":
        return total_steps
    return total_steps - int(round(cfg.decay_fraction * total_steps))


def schedule_values(cfg: OptimConfig, total_steps: int) -> np.ndarray:
    """What a schedule's shape depends on, as data: [lr, end_lr, warmup_steps, decay_start, total_steps].

    The train step takes these as an argument, so its compiled program is the same for every
    budget and learning rate: a run extended to a larger ``--steps`` runs the very program it
    started with, and runs that differ only in their schedule share one compilation.
    """
    return np.array(
        [cfg.lr, cfg.end_lr, max(cfg.warmup_steps, 0), decay_start(cfg, total_steps), total_steps], np.float32
    )


def learning_rate(kind: str, step, values):
    """The learning rate of ``step`` for a schedule ``kind`` with :func:`schedule_values` ``values`` (traceable)."""
    lr, end_lr, warmup, start, total = (values[i] for i in range(5))
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.where(warmup > 0, jnp.minimum((step + 1) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
    if kind == "constant":
        main = lr
    elif kind == "wsd":  # exactly lr until the decay starts, then linearly to end_lr at the last step
        decay_steps = total - start
        frac = jnp.where(decay_steps > 0, jnp.clip((step - start + 1) / jnp.maximum(decay_steps, 1.0), 0.0, 1.0), 0.0)
        main = lr + (end_lr - lr) * frac
    else:  # cosine from the end of warmup to total_steps
        frac = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
        main = end_lr + 0.5 * (lr - end_lr) * (1 + jnp.cos(jnp.pi * frac))
    return warm * main


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_steps``, then the chosen shape, as a function of the step."""
    values = schedule_values(cfg, total_steps)
    return lambda step: learning_rate(cfg.schedule, step, values)


def first_changed_step(old: OptimConfig, old_steps: int, new: OptimConfig, new_steps: int, taken: int) -> int | None:
    """The first of steps [0, taken) whose learning rate differs between two budgets, or None."""
    if taken <= 0:
        return None
    s = jnp.arange(taken)
    a = np.asarray(jnp.broadcast_to(lr_schedule(old, old_steps)(s), s.shape))
    b = np.asarray(jnp.broadcast_to(lr_schedule(new, new_steps)(s), s.shape))
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if diff.size else None


def decay_mask(params):
    """True for the leaves weight decay applies to: matrix weights named ``kernel``."""

    def is_kernel(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return bool(names) and names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW with ``schedule`` (:func:`lr_schedule`, or :func:`learning_rate` of traced values in the train step)."""
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw
