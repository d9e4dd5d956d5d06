"""Components: what the one training loop needs to know about a model.

A component builds its model from a config, computes ``loss(model, batch, rng)`` and
validation metrics, and may adjust the model after each optimizer update (dead-code
reset). The loop knows nothing else about it.

Dimension key: B batch, T frames, H/W/C frame height/width/channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine import config as C
from jasmine.config import DynamicsTrainConfig, LAMTrainConfig, TokenizerTrainConfig, TrainConfig
from jasmine.data.dataset import DataError, read_metadata
from jasmine.data.loader import record_arrays
from jasmine.eval.metrics import frame_psnr_ssim
from jasmine.models.dynamics import masked_token_metrics, sample_mask
from jasmine.models.genie import Genie
from jasmine.models.lam import LatentActionModel
from jasmine.models.nn import Precision
from jasmine.models.tokenizer import Tokenizer
from jasmine.sample.maskgit import generate_frame


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
    return {"mse": jnp.mean((x_BTHWC - jnp.clip(y_BTHWC, 0.0, 1.0)) ** 2), "psnr": psnr_BT.mean(), "ssim": ssim_BT.mean()}


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

    def build(self, cfg: TrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> nnx.Module:
        """The model; ``pretrained`` loads frozen parts from their runs (False when a checkpoint follows)."""
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

    def model_flops(self, cfg: TrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        """Useful FLOPs of one train step: 6 x params x tokens for trained parts, 2x for frozen forwards.

        ``params`` maps each submodule path (e.g. ``"encoder"``, ``"tokenizer/encoder"``) to its size.
        """
        return 6.0 * sum(params.values()) * self.tokens_per_batch(cfg)


class TokenizerComponent(Component):
    name = "tokenizer"
    config_cls = TokenizerTrainConfig

    def build(self, cfg: TokenizerTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> Tokenizer:
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
        return loss, metrics, {k: aux[k] for k in ("code_counts", "inputs", "best_sim")}

    def after_update(self, model: Tokenizer, aux, rng, cfg: TokenizerTrainConfig):
        return reset_codes(model.vq, aux, rng, cfg.model.dead_code_reset_steps)

    def evaluate(self, model: Tokenizer, batch, rng, cfg: TokenizerTrainConfig):
        _, metrics, _, x_BTHWC, recon_BTHWC = self._forward(model, batch, None, cfg)
        return {**metrics, **image_metrics(x_BTHWC, recon_BTHWC)}

    def preview(self, model: Tokenizer, batch, cfg: TokenizerTrainConfig):
        x_BTHWC = to_unit(batch["frames"][:1])
        return [x_BTHWC[0], model(x_BTHWC)[0][0]]


class LAMComponent(Component):
    name = "lam"
    config_cls = LAMTrainConfig

    def build(self, cfg: LAMTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> LatentActionModel:
        return LatentActionModel(cfg.model, cfg.image_size, prec=precision(cfg), attention=cfg.attention,
                                 remat=cfg.remat, rngs=rngs)

    def loss(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig, *, training: bool):
        loss, metrics, aux = lam_loss(model, to_unit(batch["frames"]), rng if training else None, cfg.model)
        return loss, metrics, aux

    def after_update(self, model: LatentActionModel, aux, rng, cfg: LAMTrainConfig):
        return reset_codes(model.vq, aux, rng, cfg.model.dead_code_reset_steps)

    def evaluate(self, model: LatentActionModel, batch, rng, cfg: LAMTrainConfig):
        x_BTHWC = to_unit(batch["frames"])
        _, metrics, aux = lam_loss(model, x_BTHWC, None, cfg.model)
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


def lam_loss(model: LatentActionModel, x_BTHWC, rng, mcfg, prefix: str = ""):
    """Next-frame MSE + VQ losses of the LAM, its metrics, and aux (counts, predictions)."""
    pred_BT1HWC, ids_BT1, _, aux = model(x_BTHWC, rng=rng)
    return _lam_terms(pred_BT1HWC, x_BTHWC[:, 1:], aux, mcfg, prefix)


def _lam_terms(pred, target, aux, mcfg, prefix: str = ""):
    mse = jnp.mean((pred - target) ** 2)
    loss = mse + aux["codebook_loss"] + mcfg.commitment_weight * aux["commitment_loss"]
    metrics = {f"{prefix}loss": loss, f"{prefix}mse": mse, f"{prefix}codebook_usage": jnp.mean(aux["code_counts"] > 0),
               f"{prefix}codebook_loss": aux["codebook_loss"], f"{prefix}commitment_loss": aux["commitment_loss"]}
    if not prefix:
        metrics["psnr"] = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
    return loss, metrics, {"code_counts": aux["code_counts"], "inputs": aux["inputs"], "best_sim": aux["best_sim"],
                           "pred": pred}


def reset_codes(vq, aux, rng, after_steps: int, prefix: str = "") -> dict[str, jax.Array]:
    if after_steps <= 0 or "code_counts" not in aux:
        return {}
    return {f"{prefix}codes_reset": vq.reset_dead_codes(aux["code_counts"], rng, after_steps=after_steps,
                                                         inputs_XL=aux.get("inputs"), sims_X=aux.get("best_sim"))}


class DynamicsComponent(Component):
    """MaskGIT dynamics of a Genie; the tokenizer (and a --lam LAM) are frozen."""

    name = "dynamics"
    config_cls = DynamicsTrainConfig

    def prepare(self, cfg: DynamicsTrainConfig) -> DynamicsTrainConfig:
        from jasmine.train.loop import run_config

        mode = cfg.lam_mode
        if cfg.tokenizer is None:
            raise ValueError("--tokenizer RUN is required: the tokenizer run whose tokens the dynamics predicts")
        tok = run_config(cfg.tokenizer)
        if not isinstance(tok, TokenizerTrainConfig):
            raise ValueError(f"--tokenizer {cfg.tokenizer} is a {type(tok).__name__} run, not a tokenizer run")
        meta = read_metadata(cfg.data)
        arrays = record_arrays(meta)
        data_shape = tuple(meta["frame_shape"])
        if tuple(tok.image_size) != data_shape:
            raise DataError(f"--tokenizer {cfg.tokenizer} was trained on {list(tok.image_size)} frames but --data "
                            f"{cfg.data} holds {list(data_shape)} frames")
        if "tokens" in arrays and meta.get("tokenizer", {}).get("config") not in (None, C.to_dict(tok.model)):
            raise DataError(f"--data {cfg.data} was tokenized with another tokenizer config than --tokenizer {cfg.tokenizer}")
        cfg = dataclasses.replace(cfg, tokenizer_model=tok.model, image_size=data_shape,
                                  num_actions=int(meta["num_actions"]))
        if mode == "gt" and "actions" not in arrays:
            raise DataError(f"--gt-actions: dataset {cfg.data} has no actions (num_actions is 0 in its metadata.json)")
        if mode == "co-train" and "frames" not in arrays:
            raise DataError(f"--co-train-lam needs raw frames, but {cfg.data} holds tokens; train on the frame dataset")
        if cfg.lam is not None:
            lam = run_config(cfg.lam)
            if not isinstance(lam, LAMTrainConfig):
                raise ValueError(f"--lam {cfg.lam} is a {type(lam).__name__} run, not a LAM run")
            if tuple(lam.image_size) != data_shape:
                raise DataError(f"--lam {cfg.lam} was trained on {list(lam.image_size)} frames, the data holds {list(data_shape)}")
            if mode == "frozen" and "frames" not in arrays and "latent_actions" not in arrays:
                raise DataError(f"--data {cfg.data} holds tokens without latent actions; re-run `jasmine data tokenize` with --lam")
            cfg = dataclasses.replace(cfg, lam_model=lam.model)
        return cfg

    def batch_keys(self, cfg: DynamicsTrainConfig) -> tuple[str, ...]:
        return ("frames", "tokens", "actions", "latent_actions")

    def build(self, cfg: DynamicsTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> Genie:
        genie = Genie(cfg.tokenizer_model, cfg.model, cfg.image_size, action_source="gt" if cfg.gt_actions else "lam",
                      lam_cfg=cfg.lam_model, num_actions=cfg.num_actions, prec=precision(cfg),
                      attention=cfg.attention, remat=cfg.remat, rngs=rngs)
        if pretrained:
            from jasmine.train.loop import load_run

            nnx.update(genie.tokenizer, nnx.state(load_run(cfg.tokenizer)[1]))
            if cfg.lam is not None:
                nnx.update(genie.lam, nnx.state(load_run(cfg.lam)[1]))
        return genie

    def trainable(self, cfg: DynamicsTrainConfig):
        roots = {"dynamics"} | ({"lam"} if cfg.co_train_lam else set()) | ({"action_embed"} if cfg.gt_actions else set())
        return lambda path, value: isinstance(value, nnx.Param) and path[0] in roots

    def loss(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig, *, training: bool):
        k_mask, k_lam = jax.random.split(rng)
        ids_BTN = model.tokens(batch)
        a_BTA, lam_out = model.frame_conditioning(batch, lam_rng=k_lam if training else None,
                                                  co_train=cfg.co_train_lam)
        mask_BTN = sample_mask(k_mask, ids_BTN.shape, cfg.model.mask_limit)
        logits_BTNV = model.dynamics(ids_BTN, mask_BTN, a_BTA)
        loss, metrics = masked_token_metrics(logits_BTNV, ids_BTN, mask_BTN, cfg.model.z_loss_weight)
        aux = {}
        if lam_out is not None:
            lam_loss_, lam_metrics, aux = _lam_terms(lam_out["pred"], lam_out["target"], lam_out, cfg.lam_model, "lam_")
            loss = loss + cfg.lam_loss_weight * lam_loss_
            metrics |= lam_metrics
        metrics["loss"] = loss
        return loss, metrics, aux

    def after_update(self, model: Genie, aux, rng, cfg: DynamicsTrainConfig):
        return reset_codes(model.lam.vq, aux, rng, cfg.lam_model.dead_code_reset_steps, "lam_") if cfg.co_train_lam else {}

    def evaluate(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        """Teacher-forced masked-token metrics, plus the last frame generated by MaskGIT vs ground truth."""
        _, metrics, _ = self.loss(model, batch, rng, cfg, training=False)
        ids_BTN, pred_BTN = self._full_frame(model, batch, rng, cfg)
        t = ids_BTN.shape[1] - 1
        metrics["full_frame_token_accuracy"] = jnp.mean(pred_BTN[:, t] == ids_BTN[:, t])
        pred_B1HWC = model.tokenizer.decode(pred_BTN[:, t:])
        target = to_unit(batch["frames"][:, t:]) if "frames" in batch else model.tokenizer.decode(ids_BTN[:, t:])
        suffix = "" if "frames" in batch else "_vs_tokenizer"
        metrics |= {f"full_frame_{k}{suffix}": v for k, v in image_metrics(target, pred_B1HWC).items()}
        return metrics

    def _full_frame(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        ids_BTN = model.tokens(batch)
        a_BTA, _ = model.frame_conditioning(batch)
        logits_fn = lambda ids, mask: model.dynamics(ids, mask, a_BTA)
        pred_BTN = generate_frame(logits_fn, ids_BTN, ids_BTN.shape[1] - 1, rng, steps=cfg.val_maskgit_steps,
                                  temperature=cfg.val_temperature)
        return ids_BTN, pred_BTN

    def preview(self, model: Genie, batch, cfg: DynamicsTrainConfig):
        one = jax.tree.map(lambda x: x[:1], batch)
        ids_BTN, pred_BTN = self._full_frame(model, one, jax.random.key(0), cfg)
        return [model.tokenizer.decode(ids_BTN)[0], model.tokenizer.decode(pred_BTN)[0]]

    def tokens_per_batch(self, cfg: DynamicsTrainConfig) -> int:
        h, w, _ = cfg.image_size
        n = (h // cfg.tokenizer_model.patch_size) * (w // cfg.tokenizer_model.patch_size)
        return cfg.batch_size * cfg.seq_len * (n + (cfg.model.action_mode == "prepend"))

    def model_flops(self, cfg: DynamicsTrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        """Trained dynamics (and co-trained LAM) at 6x; frozen encoders that run on frames at 2x."""
        h, w, _ = cfg.image_size
        B, T = cfg.batch_size, cfg.seq_len
        tok_n = (h // cfg.tokenizer_model.patch_size) * (w // cfg.tokenizer_model.patch_size)
        lam_n = (h // cfg.lam_model.patch_size) * (w // cfg.lam_model.patch_size)
        size = lambda prefix: sum(v for k, v in params.items() if k.startswith(prefix))
        flops = 6.0 * (size("dynamics") + size("action_embed")) * self.tokens_per_batch(cfg)
        if inputs == "frames":
            flops += 2.0 * (size("tokenizer/encoder") + size("tokenizer/vq")) * B * T * tok_n
        lam_enc = size("lam/encoder") + size("lam/vq") + size("lam/action_token")
        if cfg.co_train_lam:
            flops += 6.0 * (lam_enc * B * T * (lam_n + 1) + size("lam/decoder") * B * (T - 1) * lam_n)
        elif not cfg.gt_actions and inputs == "frames":
            flops += 2.0 * lam_enc * B * T * (lam_n + 1)
        return flops


COMPONENTS: dict[str, Component] = {c.name: c for c in (TokenizerComponent(), LAMComponent(), DynamicsComponent())}
