"""Dynamics of a Genie (any family, ``--dynamics``) as a component; the tokenizer (and a --lam LAM) are frozen.

Dimension key: B batch, T frames, N tokens per frame, H/W/C frame shape, A action width.

``prepare`` resolves the frozen runs (config, checkpoint step, parameter hash) and checks
them against the data: pre-tokenized data must come from exactly this tokenizer (and LAM).
Validation adds a rollout from one context frame, as ``jasmine eval`` runs it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.config import DynamicsTrainConfig, LAMTrainConfig, MAETrainConfig, TokenizerTrainConfig
from jasmine.data.dataset import DataError, read_metadata
from jasmine.data.loader import record_arrays
from jasmine.models.fidelity import frame_psnr_ssim
from jasmine.models.genie import DYNAMICS, Genie, check_tokenizer, context_rng, frame_alignment
from jasmine.train.components.base import Component, image_metrics, load_run, precision, register, reset_codes, to_unit
from jasmine.train.components.lam import lam_terms
from jasmine.train.runs import describe, provenance, run_config


def _frozen_run(flag: str, run, step: int | None, expected_hash: str, kind: type):
    """Load a frozen part's run; returns (its config, module, provenance); refuses another kind or hash."""
    cfg = run_config(run)
    if type(cfg) is not kind:  # exactly: an IDM run (a LAMTrainConfig subclass) is not a LAM
        raise ValueError(f"{flag} {run} is a {type(cfg).__name__} run, not a {kind.__name__} run")
    _, module, step = load_run(run, step)
    prov = provenance(run, step, module)
    if expected_hash and expected_hash != prov["hash"]:
        raise ValueError(
            f"{flag} {run} step {step} has params hash {prov['hash']}, but {expected_hash} was asked for "
            f"({flag}-hash); pass the run and step that made it"
        )
    return cfg, module, prov


def _check_data_provenance(data, meta: dict, key: str, prov: dict, flag: str) -> None:
    made_by = meta.get(key)
    if not made_by or made_by.get("hash") != prov["hash"]:
        raise DataError(
            f"--data {data} was made with {key} {describe(made_by)}, but {flag} is {describe(prov)}; "
            f"re-run `jasmine data tokenize` with this {key} or pass the one that made the data"
        )


def _tokenizer_kind(cfg: DynamicsTrainConfig) -> type:
    return MAETrainConfig if DYNAMICS[cfg.dynamics].continuous else TokenizerTrainConfig


class DynamicsComponent(Component):
    name = "dynamics"
    config_cls = DynamicsTrainConfig

    def prepare(self, cfg: DynamicsTrainConfig) -> DynamicsTrainConfig:
        mode = cfg.lam_mode
        if cfg.tokenizer is None:
            raise ValueError("--tokenizer RUN is required: the tokenizer run whose tokens the dynamics predicts")
        meta = read_metadata(cfg.data)
        arrays = record_arrays(meta)
        data_shape = tuple(meta["frame_shape"])
        family = DYNAMICS[cfg.dynamics]  # its model options are checked when Genie builds it
        tok_kind = _tokenizer_kind(cfg)
        tok_run = run_config(cfg.tokenizer)
        if isinstance(tok_run, (TokenizerTrainConfig, MAETrainConfig)):
            try:
                check_tokenizer(cfg.dynamics, tok_run.model)
            except ValueError as e:
                raise ValueError(f"--tokenizer {cfg.tokenizer}: {e}") from None
        tok, _, tok_prov = _frozen_run("--tokenizer", cfg.tokenizer, cfg.tokenizer_step, cfg.tokenizer_hash, tok_kind)
        if tuple(tok.image_size) != data_shape:
            raise DataError(
                f"--tokenizer {cfg.tokenizer} was trained on {list(tok.image_size)} frames but --data "
                f"{cfg.data} holds {list(data_shape)} frames"
            )
        if "tokens" in arrays:
            if family.continuous:
                raise DataError(
                    f"--data {cfg.data} holds token ids; the {family.family} dynamics trains on frames "
                    f"(its MAE latents are computed on the fly)"
                )
            _check_data_provenance(cfg.data, meta, "tokenizer", tok_prov, "--tokenizer")
        family.check_sampling(cfg.val_sampling, tok.model)
        models = {"mae_model": tok.model} if family.continuous else {"tokenizer_model": tok.model}
        cfg = dataclasses.replace(
            cfg,
            **models,
            tokenizer_window=tok.seq_len,
            image_size=data_shape,
            tokenizer_step=tok_prov["step"],
            tokenizer_hash=tok_prov["hash"],
            num_actions=int(meta["num_actions"]),
        )
        if mode == "gt" and "actions" not in arrays:
            raise DataError(f"--gt-actions: dataset {cfg.data} has no actions (num_actions is 0 in its metadata.json)")
        if mode == "co-train" and "frames" not in arrays:
            raise DataError(f"--co-train-lam needs raw frames, but {cfg.data} holds tokens; train on the frame dataset")
        if cfg.lam is not None:
            lam, _, lam_prov = _frozen_run("--lam", cfg.lam, cfg.lam_step, cfg.lam_hash, LAMTrainConfig)
            if tuple(lam.image_size) != data_shape:
                raise DataError(
                    f"--lam {cfg.lam} was trained on {list(lam.image_size)} frames, the data holds {list(data_shape)}"
                )
            if mode == "frozen" and "frames" not in arrays:
                if "latent_actions" not in arrays:
                    raise DataError(
                        f"--data {cfg.data} holds tokens without latent actions; re-run `jasmine data "
                        f"tokenize` with --lam"
                    )
                _check_data_provenance(cfg.data, meta, "lam", lam_prov, "--lam")
            cfg = dataclasses.replace(
                cfg, lam_model=lam.model, lam_window=lam.seq_len, lam_step=lam_prov["step"], lam_hash=lam_prov["hash"]
            )
        elif mode == "co-train":
            cfg = dataclasses.replace(cfg, lam_window=cfg.lam_window or cfg.seq_len)
        if mode != "gt" and cfg.lam_model.quantizer == "continuous":
            raise ValueError(
                f"{'--lam ' + str(cfg.lam) if cfg.lam is not None else '--lam-model'}: a continuous LAM "
                f"(quantizer continuous) has no codes to condition the dynamics on; it is for `jasmine actions "
                f"--kmeans`. Train the LAM with --model.quantizer vq or fsq"
            )
        if mode == "co-train" and (cfg.lam_window < 2 or (cfg.seq_len - 1) % (cfg.lam_window - 1)):
            raise ValueError(
                f"--co-train-lam: the LAM's windows of {cfg.lam_window} frames (its seq_len) must tile the "
                f"{cfg.seq_len - 1} transitions of --seq-len {cfg.seq_len}: seq_len - 1 must be a multiple "
                f"of {cfg.lam_window - 1}"
            )
        return cfg

    def batch_keys(self, cfg: DynamicsTrainConfig) -> tuple[str, ...]:
        return ("frames", "tokens", "actions", "latent_actions")

    def align(self, cfg: DynamicsTrainConfig) -> int:
        if "frames" not in record_arrays(read_metadata(cfg.data)):
            return 1  # tokens and latent actions are per frame: any window start gives the same ones
        return frame_alignment(cfg.tokenizer_window, None if cfg.gt_actions else self._lam_window(cfg))

    def _lam_window(self, cfg: DynamicsTrainConfig) -> int:
        return cfg.lam_window or cfg.seq_len

    def build(self, cfg: DynamicsTrainConfig, rngs: nnx.Rngs, *, pretrained: bool = True) -> Genie:
        genie = Genie(
            cfg.frame_tokenizer,
            cfg.model,
            cfg.image_size,
            action_source="gt" if cfg.gt_actions else "lam",
            lam_cfg=cfg.lam_model,
            num_actions=cfg.num_actions,
            tokenizer_window=cfg.tokenizer_window or 1,
            lam_window=self._lam_window(cfg),
            family=cfg.dynamics,
            prec=precision(cfg),
            attention=cfg.attention,
            remat=cfg.remat,
            rngs=rngs,
        )
        if pretrained:
            nnx.update(
                genie.tokenizer,
                nnx.state(
                    _frozen_run(
                        "--tokenizer", cfg.tokenizer, cfg.tokenizer_step, cfg.tokenizer_hash, _tokenizer_kind(cfg)
                    )[1]
                ),
            )
            if cfg.lam is not None:
                nnx.update(
                    genie.lam, nnx.state(_frozen_run("--lam", cfg.lam, cfg.lam_step, cfg.lam_hash, LAMTrainConfig)[1])
                )
        return genie

    def trainable(self, cfg: DynamicsTrainConfig):
        roots = (
            {"dynamics"} | ({"lam"} if cfg.co_train_lam else set()) | ({"action_embed"} if cfg.gt_actions else set())
        )
        return lambda path, value: isinstance(value, nnx.Param) and path[0] in roots

    def loss(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig, *, training: bool, step=None):
        k_mask, k_lam, k_noise = jax.random.split(rng, 3)
        ids_BTN = model.tokens(batch)
        a_BTA, lam_out = model.frame_conditioning(
            batch, lam_rng=k_lam if training else None, co_train=cfg.co_train_lam, detach=cfg.detach_lam
        )
        loss, metrics = model.dynamics.loss(ids_BTN, a_BTA, jnp.stack([k_mask, k_noise]), training=training)
        aux = {}
        if lam_out is not None:
            lam_loss_, lam_metrics, aux = lam_terms(lam_out["pred"], lam_out["target"], lam_out, cfg.lam_model, "lam_")
            loss = loss + cfg.lam_loss_weight * lam_loss_
            metrics |= lam_metrics
        if training and getattr(model.dynamics, "tracks_tokens", False):
            aux = {**aux, "tokens": ids_BTN}
        metrics["loss"] = loss
        return loss, metrics, aux

    def after_update(self, model: Genie, aux, rng, cfg: DynamicsTrainConfig):
        if "tokens" in aux:  # a family's running statistics of the clean tokens (diffusion's --model.latent-norm)
            model.dynamics.track(aux["tokens"])
        return (
            reset_codes(model.lam.vq, aux, rng, cfg.lam_model.dead_code_reset_steps, "lam_") if cfg.co_train_lam else {}
        )

    def evaluate(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        """Teacher-forced masked-token metrics; the last frame generated from all others; a rollout from frame 0."""
        return self.validate(model, batch, rng, cfg)[0]

    def validate(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        """:meth:`evaluate`'s metrics, and as preview rows the first clip, its tokenizer reconstruction and the
        metrics' own rollout of it (no second rollout is compiled for the image)."""
        _, metrics, _ = self.loss(model, batch, rng, cfg, training=False)
        ids_BTN, pred_BTN = self._full_frame(model, batch, rng, cfg)
        t = ids_BTN.shape[1] - 1
        if jnp.issubdtype(ids_BTN.dtype, jnp.integer):  # token ids (not MAE latents)
            metrics["full_frame_token_accuracy"] = jnp.mean(pred_BTN[:, t] == ids_BTN[:, t])
        recon_BTHWC = model.decode(ids_BTN) if "frames" not in batch else None
        target_BTHWC = to_unit(batch["frames"]) if "frames" in batch else recon_BTHWC
        suffix = "" if "frames" in batch else "_vs_tokenizer"
        metrics |= {
            f"full_frame_{k}{suffix}": v
            for k, v in image_metrics(target_BTHWC[:, t:], model.decode(pred_BTN)[:, t:]).items()
        }
        gen_BTHWC = model.decode(self._rollout(model, batch, rng, cfg))
        T = gen_BTHWC.shape[1]
        psnr, ssim = frame_psnr_ssim(target_BTHWC[:, 1:T], gen_BTHWC[:, 1:])
        copy_psnr, _ = frame_psnr_ssim(target_BTHWC[:, 1:T], jnp.repeat(target_BTHWC[:, :1], T - 1, axis=1))
        metrics |= {
            f"rollout_psnr{suffix}": psnr.mean(),
            f"rollout_ssim{suffix}": ssim.mean(),
            f"rollout_copy_last_psnr{suffix}": copy_psnr.mean(),
            f"rollout_psnr_minus_copy_last{suffix}": (psnr - copy_psnr).mean(),
        }
        first_THWC = model.decode(ids_BTN[:1])[0] if recon_BTHWC is None else recon_BTHWC[0]
        rows = ([to_unit(batch["frames"][0])] if "frames" in batch else []) + [first_THWC, gen_BTHWC[0]]
        return metrics, rows

    def _full_frame(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        ids_BTN = model.tokens(batch)
        a_BTA, _ = model.frame_conditioning(batch)
        t = ids_BTN.shape[1] - 1
        frame_BN = model.dynamics.frame(ids_BTN, a_BTA, t, rng, cfg.val_sampling, context_rng(rng))
        return ids_BTN, ids_BTN.at[:, t].set(frame_BN)

    def _rollout(self, model: Genie, batch, rng, cfg: DynamicsTrainConfig):
        """Tokens of one context frame and ``val_rollout_frames`` generated ones (actions from the clip)."""
        ids_BTN = model.tokens(batch)
        a_BTA, _ = model.frame_conditioning(batch)
        T = min(1 + (cfg.val_rollout_frames or ids_BTN.shape[1] - 1), ids_BTN.shape[1])
        return model.generate(ids_BTN[:, :1], a_BTA[:, :T], rng, cfg.val_sampling)

    def tokens_per_batch(self, cfg: DynamicsTrainConfig) -> int:
        h, w, _ = cfg.image_size
        n = (h // cfg.frame_tokenizer.patch_size) * (w // cfg.frame_tokenizer.patch_size)
        extra = 2 if DYNAMICS[cfg.dynamics].continuous else cfg.model.action_mode == "prepend"  # action (+ level)
        return cfg.batch_size * cfg.seq_len * (n + extra)

    def model_flops(self, cfg: DynamicsTrainConfig, params: dict[str, int], inputs: str = "frames") -> float:
        """Trained dynamics (and co-trained LAM) at 6x; frozen encoders that run on frames at 2x."""
        h, w, _ = cfg.image_size
        B, T = cfg.batch_size, cfg.seq_len
        L = self._lam_window(cfg)
        tok_n = (h // cfg.frame_tokenizer.patch_size) * (w // cfg.frame_tokenizer.patch_size)
        lam_n = (h // cfg.lam_model.patch_size) * (w // cfg.lam_model.patch_size)
        lam_frames = B * max(-(-(T - 1) // (L - 1)), 1) * L  # frames in the LAM's windows

        def size(prefix):
            return sum(v for k, v in params.items() if k.startswith(prefix))

        flops = 6.0 * (size("dynamics") + size("action_embed")) * self.tokens_per_batch(cfg)
        if inputs == "frames":
            flops += 2.0 * (size("tokenizer/encoder") + size("tokenizer/vq")) * B * T * tok_n  # no padded chunk
        lam_enc = size("lam/encoder") + size("lam/vq") + size("lam/action_token")
        if cfg.co_train_lam:
            flops += 6.0 * (lam_enc * lam_frames * (lam_n + 1) + size("lam/decoder") * B * (T - 1) * lam_n)
        elif not cfg.gt_actions and inputs == "frames":
            flops += 2.0 * lam_enc * lam_frames * (lam_n + 1)
        return flops


register(DynamicsComponent())
