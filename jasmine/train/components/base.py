"""What the one training loop knows about a model: the :class:`Component` seam and the registry.

A component builds its model from a config, computes ``loss(model, batch, rng)`` and
validation metrics, and may adjust the model after each optimizer update (dead-code
reset). The loop knows nothing else about it. Components register by name; ``load_run``
rebuilds any run's model through its component.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.config import TrainConfig
from jasmine.models.fidelity import frame_psnr_ssim
from jasmine.models.linear import Precision
from jasmine.train.runs import Model, program_config, resolve_step, restore_model, run_config

COMPONENTS: dict[str, Component] = {}


def register(component: Component) -> Component:
    COMPONENTS[component.name] = component
    return component


def precision(cfg: TrainConfig) -> Precision:
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return Precision(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def to_unit(frames_BTHWC) -> jax.Array:
    """uint8 frames → float32 in [0, 1]."""
    return frames_BTHWC.astype(jnp.float32) / 255.0


def image_metrics(x_BTHWC, y_BTHWC) -> dict[str, jax.Array]:
    """Mean per-frame MSE, PSNR and SSIM of y against x, both in [0, 1] (as ``jasmine eval`` computes them)."""
    psnr_BT, ssim_BT = frame_psnr_ssim(x_BTHWC, y_BTHWC)
    return {
        "mse": jnp.mean((x_BTHWC - jnp.clip(y_BTHWC, 0.0, 1.0)) ** 2),
        "psnr": psnr_BT.mean(),
        "ssim": ssim_BT.mean(),
    }


def reset_codes(vq, aux, rng, after_steps: int, prefix: str = "") -> dict[str, jax.Array]:
    if after_steps <= 0 or "code_counts" not in aux or not hasattr(vq, "reset_dead_codes"):
        return {}
    return {
        f"{prefix}codes_reset": vq.reset_dead_codes(
            aux["code_counts"], rng, after_steps=after_steps, inputs_XL=aux.get("inputs"), sims_X=aux.get("best_sim")
        )
    }


def codebook_metrics(counts_C, prefix: str = "") -> dict[str, jax.Array]:
    """Share of codes used in the batch, and the perplexity (effective number of codes) of their use."""
    p = counts_C / jnp.maximum(counts_C.sum(), 1)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {f"{prefix}codebook_usage": jnp.mean(counts_C > 0), f"{prefix}codebook_perplexity": jnp.exp(entropy)}


class Component:
    """Base: subclasses set ``name``/``config_cls`` and implement ``build`` and ``loss``."""

    name: str
    config_cls: type[TrainConfig]

    def prepare(self, cfg: TrainConfig) -> TrainConfig:
        """Resolve and check the config against its inputs (runs it depends on, the data) before training."""
        return cfg

    def batch_keys(self, cfg: TrainConfig) -> tuple[str, ...]:
        """The loader arrays the loss reads."""
        return ("frames",)

    def align(self, cfg: TrainConfig) -> int:
        """Training windows start at episode frames divisible by this (see ``jasmine.models.genie``)."""
        return 1

    def build(self, cfg: TrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> nnx.Module:
        """The model; ``pretrained`` loads frozen parts from their runs (False when a checkpoint follows)."""
        raise NotImplementedError

    def trainable(self, cfg: TrainConfig):
        """nnx filter of the parameters the optimizer updates (the rest are frozen)."""
        return nnx.Param

    def loss(self, model, batch: dict[str, jax.Array], rng, cfg: TrainConfig, *, training: bool, step=None):
        """Returns (scalar loss, metrics dict of scalars, aux for ``after_update``). ``step``: the optimizer step
        (traced) in training, for a loss that changes over training; None in validation."""
        raise NotImplementedError

    def after_update(self, model, aux: dict[str, Any], rng, cfg: TrainConfig) -> dict[str, jax.Array]:
        return {}

    def evaluate(self, model, batch, rng, cfg: TrainConfig) -> dict[str, jax.Array]:
        _, metrics, _ = self.loss(model, batch, rng, cfg, training=False)
        return metrics

    def preview(self, model, batch, cfg: TrainConfig) -> list[jax.Array]:
        """Rows of frames [T, H, W, C] in [0, 1] to draw as a validation image."""
        return []

    def validate(self, model, batch, rng, cfg: TrainConfig) -> tuple[dict[str, jax.Array], list[jax.Array]]:
        """A validation batch's metrics and its preview rows, in one compiled program (a component whose preview
        repeats work of its metrics, e.g. a rollout, overrides this to do that work once)."""
        return self.evaluate(model, batch, rng, cfg), self.preview(model, batch, cfg)

    def tokens_per_batch(self, cfg: TrainConfig) -> int:
        """Tokens the model processes per batch (for 6 x params x tokens model FLOPs)."""
        h, w, _ = cfg.image_size
        p = cfg.model.patch_size
        return cfg.batch_size * cfg.seq_len * (h // p) * (w // p)

    def model_flops(self, cfg: TrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        """Useful FLOPs of one train step: 6 x params x tokens for trained parts, 2x for frozen forwards.

        ``params`` maps each submodule path (e.g. ``"encoder"``, ``"tokenizer/encoder"``) to its size.
        """
        return 6.0 * sum(params.values()) * self.tokens_per_batch(cfg)


def build_model(component: Component, cfg: TrainConfig, *, pretrained: bool = True) -> Model:
    return Model.split(component.build(cfg, nnx.Rngs(cfg.seed), pretrained=pretrained), component.trainable(cfg))


def component_of(cfg: TrainConfig) -> Component:
    return next(c for c in COMPONENTS.values() if type(cfg) is c.config_cls)


def load_run(run_dir: str | Path, step: int | None = None) -> tuple[TrainConfig, nnx.Module, int]:
    """Rebuild a run's model from ``RUN/config.json`` with the params of its checkpoint ``step`` (default latest)."""
    cfg = run_config(run_dir)
    step = resolve_step(run_dir, step)
    component = component_of(cfg)
    return cfg, restore_model(run_dir, cfg, step, lambda: _shapes(component, program_config(cfg))), step


@functools.lru_cache(maxsize=32)
def _shapes(component: Component, cfg: TrainConfig) -> Model:
    """A model's structure and shapes, traced once per recipe (``program_config``) in a process."""
    abstract = nnx.eval_shape(lambda: component.build(cfg, nnx.Rngs(0), pretrained=False))
    return Model.split(abstract, component.trainable(cfg))
