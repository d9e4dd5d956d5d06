"""The VQ-VAE (or FSQ) video tokenizer as a component: reconstruction MSE plus the quantizer's losses.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jasmine.config import TokenizerTrainConfig
from jasmine.models.tokenizer import Tokenizer
from jasmine.train.components.base import (
    Component,
    codebook_metrics,
    image_metrics,
    precision,
    register,
    reset_codes,
    to_unit,
)


class TokenizerComponent(Component):
    name = "tokenizer"
    config_cls = TokenizerTrainConfig

    def build(self, cfg: TokenizerTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> Tokenizer:
        return Tokenizer(
            cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention, remat=cfg.remat, rngs=rngs
        )

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
            **codebook_metrics(aux["code_counts"]),
        }
        return loss, metrics, aux, x_BTHWC, recon_BTHWC

    def loss(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig, *, training: bool, step=None):
        loss, metrics, aux, _, _ = self._forward(model, batch, rng if training else None, cfg)
        return loss, metrics, {k: aux[k] for k in ("code_counts", "inputs", "best_sim") if k in aux}

    def after_update(self, model: Tokenizer, aux, rng, cfg: TokenizerTrainConfig):
        return reset_codes(model.vq, aux, rng, cfg.model.dead_code_reset_steps)

    def evaluate(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig):
        _, metrics, _, x_BTHWC, recon_BTHWC = self._forward(model, batch, None, cfg)
        return {**metrics, **image_metrics(x_BTHWC, recon_BTHWC)}

    def preview(self, model: Tokenizer, batch, cfg: TokenizerTrainConfig):
        x_BTHWC = to_unit(batch["frames"][:1])
        return [x_BTHWC[0], model(x_BTHWC)[0][0]]


register(TokenizerComponent())
