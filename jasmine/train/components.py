"""Components: what the one training loop needs to know about a model.

A component builds its model from a config, computes ``loss(model, batch, rng)`` and
validation metrics, and may adjust the model after each optimizer update (dead-code
reset). The loop knows nothing else about it.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.config import TokenizerTrainConfig, TrainConfig
from jasmine.models.nn import Precision
from jasmine.models.tokenizer import Tokenizer


def precision(cfg: TrainConfig) -> Precision:
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return Precision(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def to_unit(frames_BTHWC) -> jax.Array:
    """uint8 frames → float32 in [0, 1]."""
    return frames_BTHWC.astype(jnp.float32) / 255.0


def image_metrics(x_BTHWC, y_BTHWC) -> dict[str, jax.Array]:
    """Mean per-frame MSE, PSNR and SSIM (dm-pix) of y against x, both in [0, 1]."""
    x = x_BTHWC.reshape(-1, *x_BTHWC.shape[2:])
    y = jnp.clip(y_BTHWC.reshape(-1, *y_BTHWC.shape[2:]), 0.0, 1.0)
    return {"mse": jnp.mean((x - y) ** 2), "psnr": jnp.mean(pix.psnr(x, y)), "ssim": jnp.mean(pix.ssim(x, y))}


def frame_strip(rows_RTHWC: list[np.ndarray], max_frames: int = 8) -> np.ndarray:
    """Stack rows of frames (each [T, H, W, C] in [0, 1]) into one uint8 image, 1px gaps."""
    rows = []
    for frames in rows_RTHWC:
        frames = np.asarray(frames[:max_frames])
        pad = np.ones((frames.shape[0], frames.shape[1], 1, frames.shape[3]), frames.dtype)
        rows.append(np.concatenate([np.concatenate([f, p], axis=1) for f, p in zip(frames, pad)], axis=1))
    img = np.concatenate([np.concatenate([r, np.ones((1, *r.shape[1:]), r.dtype)], axis=0) for r in rows], axis=0)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


class Component:
    """Base: subclasses set ``name``/``config_cls`` and implement ``build`` and ``loss``."""

    name: str
    config_cls: type[TrainConfig]
    batch_keys: tuple[str, ...] = ("frames",)

    def build(self, cfg: TrainConfig, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def trainable(self, cfg: TrainConfig):
        """nnx filter of the parameters the optimizer updates (the rest are frozen)."""
        return nnx.Param

    def loss(self, model, batch: dict[str, jax.Array], rng, cfg: TrainConfig, *, training: bool):
        """Returns (scalar loss, metrics dict of scalars, aux for ``after_update``)."""
        raise NotImplementedError

    def after_update(self, model, aux: dict[str, Any], rng, cfg: TrainConfig) -> dict[str, jax.Array]:
        return {}

    def evaluate(self, model, batch, rng, cfg: TrainConfig) -> dict[str, jax.Array]:
        _, metrics, _ = self.loss(model, batch, rng, cfg, training=False)
        return metrics

    def preview(self, model, batch, cfg: TrainConfig) -> list[jax.Array]:
        """Rows of frames [T, H, W, C] in [0, 1] to draw as a validation image."""
        return []

    def tokens_per_batch(self, cfg: TrainConfig) -> int:
        """Tokens the model processes per batch (for 6 x params x tokens model FLOPs)."""
        h, w, _ = cfg.image_size
        p = cfg.model.patch_size
        return cfg.batch_size * cfg.seq_len * (h // p) * (w // p)


class TokenizerComponent(Component):
    name = "tokenizer"
    config_cls = TokenizerTrainConfig

    def build(self, cfg: TokenizerTrainConfig, rngs: nnx.Rngs) -> Tokenizer:
        return Tokenizer(cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention, remat=cfg.remat,
                         rngs=rngs)

    def _forward(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig):
        x_BTHWC = to_unit(batch["frames"])
        recon_BTHWC, _, aux = model(x_BTHWC, rng=rng)
        mse = jnp.mean((recon_BTHWC - x_BTHWC) ** 2)
        loss = mse + aux["codebook_loss"] + cfg.model.commitment_weight * aux["commitment_loss"]
        metrics = {
            "loss": loss,
            "mse": mse,
            "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
            "codebook_loss": aux["codebook_loss"],
            "commitment_loss": aux["commitment_loss"],
            "codebook_usage": jnp.mean(aux["code_counts"] > 0),
        }
        return loss, metrics, aux, x_BTHWC, recon_BTHWC

    def loss(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig, *, training: bool):
        loss, metrics, aux, _, _ = self._forward(model, batch, rng if training else None, cfg)
        return loss, metrics, {"code_counts": aux["code_counts"]}

    def after_update(self, model: Tokenizer, aux, rng, cfg: TokenizerTrainConfig):
        if cfg.model.dead_code_reset_steps <= 0:
            return {}
        return {"codes_reset": model.vq.reset_dead_codes(aux["code_counts"], rng,
                                                          after_steps=cfg.model.dead_code_reset_steps)}

    def evaluate(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig):
        _, metrics, _, x_BTHWC, recon_BTHWC = self._forward(model, batch, None, cfg)
        return {**metrics, **image_metrics(x_BTHWC, recon_BTHWC)}

    def preview(self, model: Tokenizer, batch, cfg: TokenizerTrainConfig):
        x_BTHWC = to_unit(batch["frames"][:1])
        return [x_BTHWC[0], model(x_BTHWC)[0][0]]


COMPONENTS: dict[str, Component] = {c.name: c for c in (TokenizerComponent(),)}
