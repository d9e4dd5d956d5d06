"""Presets of every training component: ``micro`` (tests), ``tiny`` (the CPU demo; chosen in docs/tuning.md) and
``coinrun`` (the reference's scale). ``jasmine train COMPONENT --preset NAME`` starts from one;
every field is a flag."""

from __future__ import annotations

import dataclasses
from typing import Any

from jasmine.config import (
    DynamicsTrainConfig,
    IDMTrainConfig,
    LAMTrainConfig,
    MAETrainConfig,
    OptimConfig,
    TokenizerTrainConfig,
    TrainConfig,
)
from jasmine.models.digits import SamplingOptions
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.genie import DYNAMICS
from jasmine.models.lam import LAMConfig
from jasmine.models.mae import MAEConfig
from jasmine.models.tokenizer import TokenizerConfig

PRESETS: dict[str, dict[str, TrainConfig]] = {
    "tokenizer": {
        "coinrun": TokenizerTrainConfig(
            steps=300_000,
            batch_size=48,
            seq_len=16,
            image_size=(64, 64, 3),
            ckpt_every=1000,
            val_every=20_000,
            val_batches=50,
            log_every=50,
            keep_every=20_000,
            optim=OptimConfig(lr=3e-4, warmup_steps=10_000, schedule="wsd", decay_fraction=0.1),
            model=TokenizerConfig(
                patch_size=16, model_dim=512, ffn_dim=2048, num_blocks=4, num_heads=8, latent_dim=32, num_latents=1024
            ),
        ),
        "tiny": TokenizerTrainConfig(  # docs/tuning.md: FSQ 8^6, one frame per window, 3200 steps of 8
            steps=3200,
            batch_size=8,
            seq_len=1,
            image_size=(64, 64, 3),
            ckpt_every=800,
            val_every=800,
            val_batches=16,
            log_every=100,
            optim=OptimConfig(lr=1e-3, warmup_steps=50, schedule="wsd", decay_fraction=0.2),
            model=TokenizerConfig(
                patch_size=8,
                model_dim=128,
                ffn_dim=512,
                num_blocks=2,
                num_heads=4,
                latent_dim=32,
                quantizer="fsq",
                fsq_levels=(8, 8, 8, 8, 8, 8),
                codebook_dropout=0.01,
            ),
        ),
    },
}


_COINRUN_TOKENIZER = PRESETS["tokenizer"]["coinrun"].model
_TINY_TOKENIZER = PRESETS["tokenizer"]["tiny"].model
_COINRUN_LAM = LAMConfig(
    patch_size=16,
    model_dim=512,
    ffn_dim=2048,
    num_blocks=4,
    num_heads=8,
    latent_dim=32,
    num_latents=6,
    dead_code_reset_steps=50,
)
_TINY_LAM = LAMConfig(
    patch_size=16,
    model_dim=128,
    ffn_dim=512,
    num_blocks=2,
    num_heads=4,
    latent_dim=16,
    num_latents=6,
    dead_code_reset_steps=50,
)
_COINRUN_RUN = dict(
    steps=200_000,
    batch_size=36,
    seq_len=16,
    image_size=(64, 64, 3),
    ckpt_every=5000,
    val_every=20_000,
    val_batches=50,
    log_every=50,
    keep_every=20_000,
)
_TINY_RUN = dict(
    steps=600,
    batch_size=8,
    seq_len=8,
    image_size=(64, 64, 3),
    ckpt_every=200,
    val_every=200,
    val_batches=2,
    log_every=20,
)
PRESETS["lam"] = {
    "coinrun": LAMTrainConfig(
        **{**_COINRUN_RUN, "seq_len": 17},
        optim=OptimConfig(lr=3e-5, warmup_steps=5000, decay_fraction=0.1),
        model=_COINRUN_LAM,
    ),
    "tiny": LAMTrainConfig(
        **{**_TINY_RUN, "steps": 1000, "batch_size": 16, "seq_len": 2, "val_every": 250, "val_batches": 8},
        optim=OptimConfig(lr=1e-3, warmup_steps=50, decay_fraction=0.2),
        model=_TINY_LAM,
    ),
}
_SHARED = (
    "steps",
    "batch_size",
    "seq_len",
    "image_size",
    "ckpt_every",
    "val_every",
    "val_batches",
    "log_every",
    "keep_every",
    "optim",
)
_MICRO_RUN = dict(
    steps=12,
    batch_size=2,
    seq_len=4,
    image_size=(64, 64, 3),
    ckpt_every=12,
    val_every=12,
    val_batches=1,
    log_every=4,
    optim=OptimConfig(lr=1e-3, warmup_steps=2, decay_fraction=0.2),
)
_MICRO_TOKENIZER = TokenizerConfig(
    patch_size=16, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=16, num_latents=64
)
_MICRO_LAM = LAMConfig(patch_size=16, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8, num_latents=4)
PRESETS["tokenizer"]["micro"] = TokenizerTrainConfig(**_MICRO_RUN, model=_MICRO_TOKENIZER)
PRESETS["mae"] = {  # the VQ tokenizer's architectures and budgets, with a tanh bottleneck instead of a quantizer
    "coinrun": MAETrainConfig(
        **{k: getattr(PRESETS["tokenizer"]["coinrun"], k) for k in _SHARED},
        model=MAEConfig(patch_size=16, model_dim=512, ffn_dim=2048, num_blocks=4, num_heads=8, latent_dim=32),
    ),
    "tiny": MAETrainConfig(
        **{k: getattr(PRESETS["tokenizer"]["tiny"], k) for k in _SHARED},
        model=MAEConfig(patch_size=8, model_dim=128, ffn_dim=512, num_blocks=2, num_heads=4, latent_dim=16),
    ),
    "micro": MAETrainConfig(
        **_MICRO_RUN, model=MAEConfig(patch_size=16, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8)
    ),
}
PRESETS["lam"]["micro"] = LAMTrainConfig(**_MICRO_RUN, model=_MICRO_LAM)
# The LAM's supervised ceiling: the same encoder, data, steps and optimiser (it has no decoder, so it takes less time)
PRESETS["idm"] = {
    name: IDMTrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    for name, cfg in PRESETS["lam"].items()
}
PRESETS["dynamics"] = {
    "coinrun": DynamicsTrainConfig(  # 17 frames: the LAM's windows tile them and clips align to 16 frames
        **{**_COINRUN_RUN, "seq_len": 17},
        optim=OptimConfig(lr=3e-5, warmup_steps=5000, decay_fraction=0.1),
        # rotary time positions: play and long rollouts slide past 17 frames at the cost of one frame (no
        # re-prefill); as good as absolute ones at the tiny scale (docs/tuning.md)
        model=DynamicsConfig(
            model_dim=512, ffn_dim=2048, num_blocks=6, num_heads=8, mask_limit=0.5, time_positions="rope"
        ),
        tokenizer_model=_COINRUN_TOKENIZER,
        lam_model=_COINRUN_LAM,
    ),
    "tiny": DynamicsTrainConfig(  # docs/tuning.md: frozen LAM, 2400 steps of 4
        **{**_TINY_RUN, "steps": 2400, "batch_size": 4, "ckpt_every": 400, "val_every": 800, "val_batches": 4},
        optim=OptimConfig(lr=1e-3, warmup_steps=50, decay_fraction=0.2),
        model=DynamicsConfig(model_dim=128, ffn_dim=512, num_blocks=2, num_heads=4, mask_limit=0.5),
        tokenizer_model=_TINY_TOKENIZER,
        lam_model=_TINY_LAM,
        val_sampling=SamplingOptions(temperature=0.0, ordinal=True),
    ),
    "micro": DynamicsTrainConfig(
        **_MICRO_RUN,
        model=DynamicsConfig(model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2),
        tokenizer_model=_MICRO_TOKENIZER,
        lam_model=_MICRO_LAM,
        val_sampling=SamplingOptions(),
    ),
}


FAMILY_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    # docs/ablations.md (prepend.toml, demo_recipe.toml, 3 seeds): the action added to every token beats the
    # reference's prepended one (+0.22 dB [+0.01, +0.45]), and 4 steps per frame cost it nothing (+0.01 dB).
    "maskgit": {"tiny": {"model.action_mode": "add", "val_sampling.steps": 4}},
    # diffusion samples each frame from noise: at temperature 0 every seed would give the same frame
    "diffusion": {"tiny": {"val_sampling.temperature": 1.0, "val_sampling.ordinal": False}},
}
"""Dynamics preset values that hold for one family only (family → preset → dotted field → value): options the
other families refuse (MaskGIT's action mode and steps per frame), so they cannot live in the shared preset."""


def _set(cfg: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), rest, value) if rest else value})


def preset(component: str, name: str, family: str | None = None) -> TrainConfig:
    """Component ``component``'s preset ``name``; for the dynamics, that of ``family`` (default: the preset's own,
    MaskGIT), with its ``FAMILY_VALUES`` applied and ``dynamics`` set to it."""
    if component not in PRESETS:
        raise ValueError(f"unknown component {component!r}; have {sorted(PRESETS)}")
    if name not in PRESETS[component]:
        raise ValueError(f"--preset {name!r} does not exist for {component}; choose from {sorted(PRESETS[component])}")
    cfg = PRESETS[component][name]
    if component != "dynamics":
        if family is not None:
            raise ValueError(f"only the dynamics has families; {component} was given {family!r}")
        return cfg
    if family is not None and family not in DYNAMICS:
        raise ValueError(f"--dynamics {family!r} is not a dynamics family; choose from {sorted(DYNAMICS)}")
    cfg = dataclasses.replace(cfg, dynamics=family or cfg.dynamics)
    for dotted, value in FAMILY_VALUES.get(cfg.dynamics, {}).get(name, {}).items():
        cfg = _set(cfg, dotted, value)
    return cfg
