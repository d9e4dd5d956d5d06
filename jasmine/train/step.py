"""The compiled steps of the training loop: train, and eval with its preview; module-level functions of (component,
program config, graph), so every run of one recipe in a process shares their tracing and compilation.

The train step takes its learning-rate schedule as data (``jasmine.train.optim.schedule_values``), so its program
depends on neither ``--steps`` nor the learning rate, and ``program_config`` clears every other field that does not
enter the program (paths, budgets, logging).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from jasmine import config as C
from jasmine.train.components import Component, build_model
from jasmine.train.mesh import batch_sharding, replicated, state_shardings
from jasmine.train.optim import (
    learning_rate,
    lr_schedule,
    make_optimizer,
    schedule_values,
)
from jasmine.train.runs import Model, init_state, program_config


def _train_step(component: Component, cfg: C.TrainConfig, graphdef, state, batch, schedule_values):
    """One optimizer step; ``schedule_values`` (:func:`schedule_values`) is data, so the compiled step depends on
    neither ``--steps`` nor the learning rate."""
    tx = make_optimizer(cfg.optim, lambda step: learning_rate(cfg.optim.schedule, step, schedule_values))
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    k_loss, k_post = jax.random.split(step_key)

    def loss_fn(params):
        module = nnx.merge(graphdef, params, state["frozen"], state["rest"])
        loss, metrics, aux = component.loss(module, batch, k_loss, cfg, training=True, step=state["step"])
        return loss, (metrics, aux, nnx.state(module, nnx.Not(nnx.Param)))

    (_, (metrics, aux, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    module = nnx.merge(graphdef, params, state["frozen"], rest)
    metrics = {**metrics, **component.after_update(module, aux, k_post, cfg)}
    _, params, frozen, rest = nnx.split(module, component.trainable(cfg), nnx.Param, ...)
    metrics |= {
        "grad_norm": optax.global_norm(grads),
        "lr": learning_rate(cfg.optim.schedule, state["step"], schedule_values),
    }
    new_state = {**state, "step": state["step"] + 1, "params": params, "frozen": frozen, "rest": rest, "opt": opt}
    return new_state, metrics


def _eval_step(component: Component, cfg: C.TrainConfig, graphdef, state, batch):
    """A validation batch's metrics and preview rows (one program: :meth:`Component.validate`)."""
    module = nnx.merge(graphdef, state["params"], state["frozen"], state["rest"])
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 2**31 - 1)
    return component.validate(module, batch, key, cfg)


def _bind(jitted, component: Component, cfg: C.TrainConfig, model: Model):
    """``jitted`` (static component, config and graph) as a function of the arrays only."""
    static = (component, program_config(cfg), model.graphdef)
    return lambda *arrays: jitted(*static, *arrays)


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


class TrainStep:
    """The jitted train step of a run: ``step(state, batch) -> (state, metrics)``, its schedule passed as data."""

    def __init__(self, jitted, static: tuple, schedule: np.ndarray):
        self.jitted, self.static, self.schedule = jitted, static, schedule

    def __call__(self, state, batch):
        return self.jitted(*self.static, state, batch, self.schedule)

    def lower(self, state, batch):
        """The lowered step; call its ``compile()`` result with ``(state, batch, self.schedule)``."""
        return self.jitted.lower(*self.static, state, batch, self.schedule)


def setup(cfg: C.TrainConfig, component: Component, mesh, *, pretrained: bool = True):
    """Model, optimizer, initial state on the mesh, its shardings, and the jitted train step."""
    model = build_model(component, cfg, pretrained=pretrained)  # False when a checkpoint supplies every value
    tx = make_optimizer(cfg.optim, lr_schedule(cfg.optim, cfg.steps))
    state = init_state(model, tx, cfg.seed)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    jitted = jax.jit(
        _train_step,
        static_argnums=(0, 1, 2),
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=3,
    )
    static = (component, program_config(cfg), model.graphdef)
    return model, state, shardings, TrainStep(jitted, static, schedule_values(cfg.optim, cfg.steps))
