"""The latent action model as a component: next-frame MSE plus VQ losses, with dead-code resets.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jasmine.config import LAMTrainConfig
from jasmine.models.lam import LatentActionModel
from jasmine.train.components.base import (
    Component,
    codebook_metrics,
    image_metrics,
    precision,
    register,
    reset_codes,
    to_unit,
)


def lam_terms(pred, target, aux, mcfg, prefix: str = ""):
    """Loss, metrics and aux (counts, predictions) of the LAM from its predictions and VQ outputs."""
    mse = jnp.mean((pred - target) ** 2)
    loss = mse + aux["codebook_loss"] + mcfg.commitment_weight * aux["commitment_loss"]
    metrics = {
        f"{prefix}loss": loss,
        f"{prefix}mse": mse,
        f"{prefix}codebook_loss": aux["codebook_loss"],
        f"{prefix}commitment_loss": aux["commitment_loss"],
        **codebook_metrics(aux["code_counts"], prefix),
    }
    if not prefix:
        metrics["psnr"] = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
    keep = {k: aux[k] for k in ("code_counts", "inputs", "best_sim") if k in aux}
    return loss, metrics, {**keep, "pred": pred}


class LAMComponent(Component):
    name = "lam"
    config_cls = LAMTrainConfig

    def build(self, cfg: LAMTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> LatentActionModel:
        return LatentActionModel(
            cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention, remat=cfg.remat, rngs=rngs
        )

    def _terms(self, model: LatentActionModel, x_BTHWC, rng, cfg: LAMTrainConfig):
        pred_BT1HWC, _, _, aux = model(x_BTHWC, rng=rng)
        return lam_terms(pred_BT1HWC, x_BTHWC[:, 1:], aux, cfg.model)

    def loss(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig, *, training: bool):
        return self._terms(model, to_unit(batch["frames"]), rng if training else None, cfg)

    def after_update(self, model: LatentActionModel, aux, rng, cfg: LAMTrainConfig):
        return reset_codes(model.vq, aux, rng, cfg.model.dead_code_reset_steps)

    def evaluate(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig):
        x_BTHWC = to_unit(batch["frames"])
        _, metrics, aux = self._terms(model, x_BTHWC, None, cfg)
        return {**metrics, **image_metrics(x_BTHWC[:, 1:], aux["pred"])}

    def preview(self, model: LatentActionModel, batch, cfg: LAMTrainConfig):
        x_BTHWC = to_unit(batch["frames"][:1])
        return [x_BTHWC[0, 1:], model(x_BTHWC)[0][0]]

    def _n(self, cfg: LAMTrainConfig) -> int:
        h, w, _ = cfg.image_size
        return (h // cfg.model.patch_size) * (w // cfg.model.patch_size)

    def tokens_per_batch(self, cfg: LAMTrainConfig) -> int:
        return cfg.batch_size * cfg.seq_len * (self._n(cfg) + 1)  # encoder tokens (incl. action tokens)

    def model_flops(self, cfg: LAMTrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        dec = sum(v for k, v in params.items() if k.startswith("decoder"))
        enc = sum(params.values()) - dec
        return 6.0 * (enc * self.tokens_per_batch(cfg) + dec * cfg.batch_size * (cfg.seq_len - 1) * self._n(cfg))


register(LAMComponent())
