"""Learning-rate schedules (warmup then WSD / cosine / constant) and the AdamW optimizer."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jasmine.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_steps``, then the chosen shape, as a function of the step."""
    warmup = max(cfg.warmup_steps, 0)
    decay_steps = int(round(cfg.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum((step + 1) / warmup, 1.0) if warmup else 1.0
        if cfg.schedule == "constant":
            main = cfg.lr
        elif cfg.schedule == "wsd":
            frac = jnp.clip((step - decay_start) / max(decay_steps, 1), 0.0, 1.0) if decay_steps else 0.0
            main = cfg.lr + (cfg.end_lr - cfg.lr) * frac
        else:  # cosine from the end of warmup to total_steps
            frac = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
            main = cfg.end_lr + 0.5 * (cfg.lr - cfg.end_lr) * (1 + jnp.cos(jnp.pi * frac))
        return warm * main

    return schedule


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    adamw = optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw
