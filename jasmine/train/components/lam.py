"""The latent action model as a component: next-frame MSE plus VQ losses, with dead-code resets.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jasmine.config import LAMTrainConfig
from jasmine.data.dataset import DataError, effective_actions, read_metadata
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


ADVERSARY_TEMPERATURE = 0.1
"""Temperature of the encoder's soft code assignment, softmax(cosine similarity / T), in the state adversary."""


def state_adversary_terms(model: LatentActionModel, x_BTHWC, ids_BT1, sims_BT1A):
    """(the adversary's cross-entropy guessing each code from frame t-1 alone, which trains only the adversary;
    an estimate of the mutual information between the codes and frame t-1, which trains only the encoder).

    The estimate is the entropy of the batch's mean soft code assignment minus the adversary's cross-entropy on
    the soft assignment: a code that names the move under a random policy costs nothing (frame t-1 says nothing
    of it), one that names where the paddle ends up costs what frame t-1 tells of it, although both are equally
    hard to guess (one of three either way)."""
    logits_BT1A = model.guess_codes(jax.lax.stop_gradient(x_BTHWC))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BT1A, jax.lax.stop_gradient(ids_BT1)).mean()
    soft_BT1A = jax.nn.softmax(sims_BT1A.astype(jnp.float32) / ADVERSARY_TEMPERATURE, axis=-1)
    log_guess_BT1A = jax.lax.stop_gradient(jax.nn.log_softmax(logits_BT1A, axis=-1))
    mean_A = soft_BT1A.reshape(-1, soft_BT1A.shape[-1]).mean(axis=0)
    marginal_entropy = -jnp.sum(mean_A * jnp.log(mean_A + 1e-9))
    return ce, marginal_entropy + jnp.sum(soft_BT1A * log_guess_BT1A, axis=-1).mean()


def with_action_classes(cfg: LAMTrainConfig) -> LAMTrainConfig:
    """``cfg`` with the data's effective action classes recorded (``action_classes``, ``class_names``)."""
    table = effective_actions(read_metadata(cfg.data), Path(cfg.data) / "metadata.json")
    if table is None:
        raise DataError(f"--data {cfg.data} has no actions (num_actions is 0 in its metadata.json): no labels")
    names, of_action = table
    classes = tuple(int(c) for c in of_action)
    if cfg.action_classes and tuple(cfg.action_classes) != classes:
        raise DataError(f"--data {cfg.data}: its effective action classes differ from the run's recorded ones")
    return dataclasses.replace(cfg, action_classes=classes, class_names=tuple(names))


def labelled(frames_BTHWC, fraction: float):
    """[B, T-1] whether the transition into frame t is labelled: a fixed hash of frame t-1's pixels below
    ``fraction`` (the same transitions in every window and epoch)."""
    x = frames_BTHWC[:, :-1].astype(jnp.uint32)
    w = jax.random.randint(jax.random.key(20240607), x.shape[2:], 1, 2**31 - 1).astype(jnp.uint32)
    h = (x * w).sum(axis=(2, 3, 4), dtype=jnp.uint32) * jnp.uint32(2654435761)  # Knuth's multiplicative mix
    return (h >> 8) % 10_000 < int(round(fraction * 10_000))


def roll_windows(rng, x_BTHWC, max_shift: int | None = None):
    """Each window [T, H, W, C] rolled circularly by its own random (dy, dx), the same for all its frames: each
    uniform over every offset, or over -max_shift..max_shift pixels."""
    B, _, H, W, _ = x_BTHWC.shape

    def offsets(key, n: int):
        if max_shift is None or 2 * max_shift + 1 >= n:
            return jax.random.randint(key, (B,), 0, n)
        return jax.random.randint(key, (B,), -max_shift, max_shift + 1)

    k_y, k_x = jax.random.split(rng)
    dy_B, dx_B = offsets(k_y, H), offsets(k_x, W)
    return jax.vmap(lambda x, dy, dx: jnp.roll(x, (dy, dx), axis=(1, 2)))(x_BTHWC, dy_B, dx_B)


class LAMComponent(Component):
    name = "lam"
    config_cls = LAMTrainConfig

    def prepare(self, cfg: LAMTrainConfig) -> LAMTrainConfig:
        if not 0 <= cfg.action_labels <= 1:
            raise ValueError(f"--action-labels must be a fraction in [0, 1], got {cfg.action_labels}")
        if cfg.state_adversary < 0 or (cfg.state_adversary and cfg.model.quantizer != "vq"):
            raise ValueError(
                f"--state-adversary must be >= 0 and needs --model.quantizer vq, got {cfg.state_adversary} with "
                f"{cfg.model.quantizer}"
            )
        if cfg.roll_decoder < 0 or cfg.roll_decoder_from < 0 or (cfg.roll_decoder_from and not cfg.roll_decoder):
            raise ValueError(
                f"--roll-decoder (pixels) and --roll-decoder-from (a step) must be >= 0, the step only with a roll; "
                f"got {cfg.roll_decoder} and {cfg.roll_decoder_from}"
            )
        if cfg.state_adversary and not cfg.model.adversary:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adversary=True))
        if not cfg.action_labels:
            return cfg
        cfg = with_action_classes(cfg)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, label_classes=len(cfg.class_names)))

    def batch_keys(self, cfg: LAMTrainConfig) -> tuple[str, ...]:
        return ("frames", "actions") if cfg.action_labels else ("frames",)

    def build(self, cfg: LAMTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> LatentActionModel:
        return LatentActionModel(
            cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention, remat=cfg.remat, rngs=rngs
        )

    def _terms(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig, step=None):
        x_BTHWC = to_unit(batch["frames"])
        if rng is not None and cfg.roll_augment:
            rng, roll_rng = jax.random.split(rng)
            x_BTHWC = roll_windows(roll_rng, x_BTHWC)
        dec_BTHWC = x_BTHWC  # what the decoder sees and predicts
        if rng is not None and cfg.roll_decoder:
            rng, roll_rng = jax.random.split(rng)
            dec_BTHWC = roll_windows(roll_rng, x_BTHWC, cfg.roll_decoder)
            if step is not None and cfg.roll_decoder_from:  # a curriculum: unrolled until that step
                dec_BTHWC = jnp.where(step >= cfg.roll_decoder_from, dec_BTHWC, x_BTHWC)
        z_BT1L, ids_BT1, vq_aux = model.encode(x_BTHWC, rng=rng)
        pred_BT1HWC = model.decode(dec_BTHWC, z_BT1L)
        loss, metrics, aux = lam_terms(pred_BT1HWC, dec_BTHWC[:, 1:], vq_aux, cfg.model)
        if cfg.state_adversary:
            adv_loss, mi = state_adversary_terms(model, x_BTHWC, ids_BT1, vq_aux["sims"])
            loss = loss + adv_loss + cfg.state_adversary * mi
            metrics = {**metrics, "loss": loss, "adversary_ce": adv_loss, "adversary_mi": mi}
        if cfg.action_labels:  # cross-entropy of the quantised action's class on the labelled transitions
            labels_BT1 = jnp.asarray(cfg.action_classes, jnp.int32)[batch["actions"][:, :-1]]
            logits_BT1C = model.label_head(z_BT1L).astype(jnp.float32)
            mask = labelled(batch["frames"], cfg.action_labels).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits_BT1C, labels_BT1)
            label_loss = (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)
            loss = loss + cfg.action_label_weight * label_loss
            metrics = {**metrics, "loss": loss, "label_loss": label_loss, "labelled": mask.mean()}
        return loss, metrics, aux

    def loss(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig, *, training: bool, step=None):
        return self._terms(model, batch, rng if training else None, cfg, step)

    def after_update(self, model: LatentActionModel, aux, rng, cfg: LAMTrainConfig):
        return reset_codes(model.vq, aux, rng, cfg.model.dead_code_reset_steps)

    def evaluate(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig):
        x_BTHWC = to_unit(batch["frames"])
        _, metrics, aux = self._terms(model, batch, None, cfg)
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
