"""The MAE tokenizer as a component: MSE of the full frame reconstructed from masked patches.

Dimension key: B batch, T frames, H/W/C frame height/width/channels, N patches, L latent width.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jasmine.config import MAETrainConfig
from jasmine.models.mae import MAETokenizer
from jasmine.train.components.base import Component, image_metrics, precision, register, to_unit


class MAEComponent(Component):
    name = "mae"
    config_cls = MAETrainConfig

    def build(self, cfg: MAETrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> MAETokenizer:
        return MAETokenizer(
            cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention, remat=cfg.remat, rngs=rngs
        )

    def loss(self, model: MAETokenizer, batch, rng, cfg: MAETrainConfig, *, training: bool, step=None):
        x_BTHWC = to_unit(batch["frames"])
        recon_BTHWC, z_BTNL, mask_BTN = model(x_BTHWC, rng=rng if training else None)
        mse = jnp.mean((recon_BTHWC - x_BTHWC) ** 2)
        metrics = {
            "loss": mse,
            "mse": mse,
            "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
            "mask_rate": mask_BTN.mean(),
            "latent_abs": jnp.abs(z_BTNL).mean(),
        }
        return mse, metrics, {}

    def evaluate(self, model: MAETokenizer, batch, rng, cfg: MAETrainConfig):
        """Validation reconstructs unmasked frames: what the diffusion dynamics and eval's ceiling see."""
        x_BTHWC = to_unit(batch["frames"])
        recon_BTHWC, z_BTNL, _ = model(x_BTHWC)
        return {
            "loss": jnp.mean((recon_BTHWC - x_BTHWC) ** 2),
            **image_metrics(x_BTHWC, recon_BTHWC),
            "latent_abs": jnp.abs(z_BTNL).mean(),
        }

    def preview(self, model: MAETokenizer, batch, cfg: MAETrainConfig):
        x_BTHWC = to_unit(batch["frames"][:1])
        return [x_BTHWC[0], model(x_BTHWC)[0][0]]


register(MAEComponent())
