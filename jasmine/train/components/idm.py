"""The inverse-dynamics model (IDM) as a component: the LAM's encoder trained with the real actions' labels.

It is the supervised ceiling of latent actions: how much of the action is identifiable from the frames at all,
with the LAM's architecture, data and steps (``jasmine actions --run IDM_RUN`` measures it like a LAM: its codes
are its predicted classes). Labels are the dataset's effective action classes (``generator.effective_actions``).

Dimension key: B batch, T frames, C classes.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from jasmine.config import IDMTrainConfig
from jasmine.models.lam import InverseDynamicsModel
from jasmine.train.components.base import precision, register, to_unit
from jasmine.train.components.lam import LAMComponent, roll_windows, with_action_classes


class IDMComponent(LAMComponent):
    name = "idm"
    config_cls = IDMTrainConfig

    def prepare(self, cfg: IDMTrainConfig) -> IDMTrainConfig:
        if cfg.state_adversary:
            raise ValueError("--state-adversary trains a LAM's codes; the IDM has labels (leave it at 0)")
        if cfg.roll_decoder:
            raise ValueError("--roll-decoder rolls what a LAM's decoder sees; the IDM has no decoder (leave it at 0)")
        return with_action_classes(cfg)

    def batch_keys(self, cfg: IDMTrainConfig) -> tuple[str, ...]:
        return ("frames", "actions")

    def build(self, cfg: IDMTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> InverseDynamicsModel:
        return InverseDynamicsModel(
            cfg.model,
            cfg.image_size,
            max(len(cfg.class_names), 1),
            prec=precision(cfg),
            attention=cfg.attention,
            remat=cfg.remat,
            rngs=rngs,
        )

    def loss(self, model: InverseDynamicsModel, batch, rng, cfg: IDMTrainConfig, *, training: bool, step=None):
        x_BTHWC = to_unit(batch["frames"])
        if training and cfg.roll_augment:  # the LAM recipe's augmentation, so the ceiling stays its ceiling
            x_BTHWC = roll_windows(rng, x_BTHWC)
        logits_BT1C = model(x_BTHWC)
        labels_BT1 = jnp.asarray(cfg.action_classes, jnp.int32)[batch["actions"][:, :-1]]  # the action into t
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_BT1C, labels_BT1).mean()
        accuracy = (jnp.argmax(logits_BT1C, -1) == labels_BT1).mean()
        return loss, {"loss": loss, "accuracy": accuracy}, {}

    def after_update(self, model, aux, rng, cfg):
        return {}

    def evaluate(self, model, batch, rng, cfg: IDMTrainConfig):
        return self.loss(model, batch, rng, cfg, training=False)[1]

    def preview(self, model, batch, cfg):
        return []

    def model_flops(self, cfg: IDMTrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        return 6.0 * sum(params.values()) * self.tokens_per_batch(cfg)


register(IDMComponent())
