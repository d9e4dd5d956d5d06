"""Typed configs with named presets, JSON round trip, and validation with clear errors.

A training run is a :class:`TrainConfig` subclass per component (it adds ``model``).
Presets: ``coinrun`` (the reference defaults), ``tiny`` (CPU demo: minutes) and ``micro``
(seconds; the CI run of the demo pipeline).
Every field is a command-line flag (``--steps``, ``--model.patch-size``, ``--optim.lr``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jasmine.models.digits import SamplingOptions
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.lam import LAMConfig
from jasmine.models.mae import MAEConfig
from jasmine.models.nn import Attention, Remat
from jasmine.models.tokenizer import TokenizerConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then WSD (warmup-stable-decay), cosine or constant."""

    lr: float = 3e-4
    warmup_steps: int = 10_000
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    decay_fraction: float = 0.1
    """WSD: the last fraction of steps decays linearly to end_lr."""
    end_lr: float = 0.0
    b1: float = 0.9
    b2: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0
    """Clip the global gradient norm to this (0 = off)."""


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (``jasmine.train.distributed``). All unset: a single
    process, or the processes of a SLURM / Open MPI launch with several tasks, detected by JAX."""

    coordinator: str | None = None
    """HOST:PORT of process 0's coordinator service (env JAX_COORDINATOR_ADDRESS)."""
    num_processes: int | None = None
    """Number of processes in the run (env JAX_NUM_PROCESSES)."""
    process_id: int | None = None
    """This process's index, 0 .. num_processes - 1 (env JAX_PROCESS_ID)."""
    initialization_timeout: int = 300
    """Seconds to wait for every process to join."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every component's training run."""

    data: Path | None = None
    """Dataset directory (from `jasmine data coinrun`)."""
    out: Path | None = None
    """Run directory: config.json, checkpoints/, metrics.jsonl, samples/, tensorboard/."""
    steps: int = 1000
    batch_size: int = 8
    """Global batch size (sequences), split across devices."""
    seq_len: int = 16
    image_size: tuple[int, int, int] = (64, 64, 3)
    """Frame height, width, channels; must match the dataset."""
    seed: int = 0
    resume: bool = False
    """Continue from the latest checkpoint in --out."""
    init_from: Path | None = None
    """Start this (new) run from a checkpoint of another run, e.g. to extend a WSD run from its stable phase."""
    init_step: int | None = None
    """Checkpoint step of --init-from (default: its latest)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter (master weight) dtype. Training refuses bfloat16: with no float32 master copy most updates at
    the presets' learning rates round away. --dtype bfloat16 already runs the matmuls in bf16."""
    attention: Attention = "auto"
    """auto = cuDNN flash attention on NVIDIA GPUs where shapes allow, XLA otherwise."""
    remat: Remat = "none"
    """Activation checkpointing per block: none, full (recompute), dots (save matmul outputs), or offload (save
    matmul outputs in pinned host memory: device memory of full, recompute of dots, plus host transfers)."""
    sharding: Literal["dp", "fsdp", "hybrid"] = "dp"
    """dp: replicate params; fsdp: shard large params and their optimizer state over all devices; hybrid: the
    --mesh DPxFSDP (default: FSDP over each process's devices, DP across processes)."""
    mesh: str = ""
    """With --sharding hybrid: DPxFSDP, e.g. 2x4 (DP x FSDP = the device count)."""
    log_every: int = 10
    val_every: int = 500
    val_batches: int = 4
    """Batches per validation (0 = no validation: nothing is compiled for it)."""
    ckpt_every: int = 1000
    keep_last: int = 3
    """Checkpoints kept (most recent)."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this (0 = none)."""
    num_workers: int = 0
    """Grain worker processes for loading."""
    read_threads: int = 0
    """Grain threads reading windows ahead in each loading process (0: read when a batch is asked for; with
    the GIL on few cores threads slow in-memory reads down, see README; they help on slow network disks)."""
    wandb: bool = False
    """Also log to Weights & Biases (WANDB_MODE=offline works)."""
    optim: OptimConfig = OptimConfig()
    distributed: DistributedConfig = DistributedConfig()


@dataclass(frozen=True)
class TokenizerTrainConfig(TrainConfig):
    model: TokenizerConfig = TokenizerConfig()


@dataclass(frozen=True)
class LAMTrainConfig(TrainConfig):
    model: LAMConfig = LAMConfig()
    action_labels: float = 0.0
    """Fraction of transitions whose real action the LAM may see (0: none, Genie's LAM): a linear head on the
    quantised action classifies their effective class. Which transitions are labelled is a fixed function of
    frame t-1's pixels, the same in every window and epoch."""
    action_label_weight: float = 0.1
    """Weight of that head's cross-entropy in the loss."""
    action_classes: tuple[int, ...] = ()
    """Effective class of each real action id (filled from the data's metadata and recorded, with labels)."""
    class_names: tuple[str, ...] = ()
    """Names of the effective classes (filled from the data's metadata and recorded, with labels)."""
    roll_augment: bool = False
    """Roll each training window circularly by a random offset in height and width, the same for all its frames:
    a code that names where things are (the paddle's column) stops paying, one that names the change keeps paying."""
    roll_decoder: int = 0
    """Up to this many pixels (each way, in height and width; 0: off): the decoder sees and predicts the window
    rolled circularly by its own random offset, while the encoder sees it unrolled. A code must then hold under
    a shift of the frame, so one that names where things end up (the paddle's column) stops reconstructing and
    one that names the change still does. Half the frame's size or more: any offset. From step 0 the decoder
    stops using the codes (measured on Breakout): start it later with --roll-decoder-from."""
    roll_decoder_from: int = 0
    """Training step from which --roll-decoder applies; before it the decoder sees what the encoder sees, so the
    codes first learn to draw what the action moves, then the roll leaves only what holds under a shift."""
    state_adversary: float = 0.0
    """Weight of a state adversary (0: off; VQ only): a small head learns to guess each code from frame t-1
    alone, and the encoder minimises an estimate of the codes' mutual information with frame t-1 (the entropy of
    their batch marginal minus the head's cross-entropy). When play does not look at the frame (a random
    policy), the real action is independent of frame t-1, while a code naming the outcome ("the paddle ends at
    column 3") is not."""


@dataclass(frozen=True)
class IDMTrainConfig(LAMTrainConfig):
    """The LAM's supervised ceiling: its encoder classifying the real action (effective classes) between frames."""


@dataclass(frozen=True)
class MAETrainConfig(TrainConfig):
    """The MAE tokenizer: continuous latents for the diffusion dynamics."""

    model: MAEConfig = MAEConfig()


@dataclass(frozen=True)
class DynamicsTrainConfig(TrainConfig):
    """Dynamics on a frozen tokenizer, with the LAM frozen (--lam), co-trained, or GT actions."""

    tokenizer: Path | None = None
    """Tokenizer run directory (required; frozen)."""
    tokenizer_step: int | None = None
    """Checkpoint step of --tokenizer (default: its latest; recorded)."""
    tokenizer_hash: str = ""
    """Content hash of the tokenizer params (filled and recorded; if given, a different tokenizer is refused)."""
    lam: Path | None = None
    """LAM run directory: use this LAM, frozen (or, with --co-train-lam, as the co-trained LAM's start)."""
    lam_step: int | None = None
    """Checkpoint step of --lam (default: its latest; recorded)."""
    lam_hash: str = ""
    """Content hash of the --lam params (filled and recorded; if given, a different LAM is refused)."""
    co_train_lam: bool = False
    """Train the LAM jointly (fresh from --lam-model, or from --lam RUN), keeping its decoder and losses."""
    dynamics: Literal["maskgit", "causal", "diffusion"] = "maskgit"
    """Dynamics family: maskgit (Genie's; frames by confidence-based unmasking) or causal (autoregressive over
    tokens: token k of frame t from all earlier frames, tokens < k of t and actions <= t)."""
    detach_lam: bool = False
    """With --co-train-lam: no dynamics gradient reaches the LAM, which learns from its own loss only (ablation)."""
    gt_actions: bool = False
    """Condition on the dataset's ground-truth actions instead of latent actions."""
    model: DynamicsConfig = DynamicsConfig()
    tokenizer_model: TokenizerConfig = TokenizerConfig()
    """Filled from --tokenizer's run when training."""
    mae_model: MAEConfig | None = None
    """Filled from --tokenizer when it is an MAE run (the diffusion family's latents)."""
    tokenizer_window: int = 0
    """Frames the tokenizer encodes together: its training seq_len (filled from --tokenizer's run)."""
    lam_model: LAMConfig = LAMConfig()
    """Architecture of a co-trained LAM; filled from --lam's run when given."""
    lam_window: int = 0
    """Frames the LAM encodes together: --lam's training seq_len (filled), or 0 = this run's seq_len for a fresh
    co-trained LAM."""
    num_actions: int = 0
    """Ground-truth action count; filled from the dataset."""
    lam_loss_weight: float = 1.0
    """Weight of the co-trained LAM's loss."""
    val_sampling: SamplingOptions = SamplingOptions()
    """MaskGIT sampling of the validation rollouts and full-frame metric."""
    val_rollout_frames: int = 0
    """Validation rollout length: generated frames after one context frame (0 = seq_len - 1)."""

    @property
    def frame_tokenizer(self) -> TokenizerConfig | MAEConfig:
        """The tokenizer the dynamics reads: the MAE's for the diffusion family, the VQ/FSQ one's otherwise."""
        return self.mae_model or self.tokenizer_model

    @property
    def lam_mode(self) -> str:
        modes = [
            m
            for m, on in (
                ("frozen", self.lam is not None and not self.co_train_lam),
                ("co-train", self.co_train_lam),
                ("gt", self.gt_actions),
            )
            if on
        ]
        if len(modes) != 1:
            raise ValueError(
                "choose exactly one action source: --lam RUN (frozen), --co-train-lam, or --gt-actions"
                + (f" (got {', '.join(modes)})" if modes else "")
            )
        return modes[0]


def validate(cfg: TrainConfig, num_devices: int = 1) -> None:
    """Raise ValueError naming the flag for values that cannot work."""
    if cfg.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {cfg.steps}")
    if cfg.batch_size <= 0 or cfg.batch_size % num_devices:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {num_devices} devices")
    if cfg.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {cfg.seq_len}")
    if cfg.param_dtype != "float32":
        raise ValueError(
            f"--param-dtype {cfg.param_dtype}: training keeps no float32 master copy of bf16 weights, and an "
            f"Adam step of about lr ({cfg.optim.lr:g}) is below half a bf16 ulp (2^-9 relative) of any weight "
            f"larger than {cfg.optim.lr * 2**9:.2g}, so most updates would round away and training would silently "
            "stall. Keep --param-dtype float32; --dtype bfloat16 already computes in bf16 (weights are cast per op)"
        )
    if cfg.val_batches < 0:
        raise ValueError(f"--val-batches must be >= 0 (0 = no validation), got {cfg.val_batches}")
    for name in ("log_every", "val_every", "ckpt_every", "keep_last"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.optim.decay_fraction <= 1:
        raise ValueError(f"--optim.decay-fraction must be in [0, 1], got {cfg.optim.decay_fraction}")
    model = getattr(cfg, "model", None)
    if model is not None and hasattr(model, "patch_size"):
        h, w, _ = cfg.image_size
        if model.patch_size <= 0 or h % model.patch_size or w % model.patch_size:
            raise ValueError(
                f"--model.patch-size {model.patch_size} does not divide the {h}x{w} frames "
                f"(--image-size); pick a divisor of both"
            )
    if model is not None and hasattr(model, "num_heads") and model.model_dim % model.num_heads:
        raise ValueError(f"--model.model-dim {model.model_dim} is not divisible by --model.num-heads {model.num_heads}")


# ---------------------------------------------------------------------------- JSON round trip


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if tp is Path:
        return Path(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value)
    if origin is tuple:
        return tuple(value)
    return value


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def save_config(cfg: TrainConfig, path: Path) -> None:
    from jasmine.data.records import write_json_atomic

    write_json_atomic(path, {"type": type(cfg).__name__, **to_dict(cfg)})


def load_config(path: Path) -> TrainConfig:
    data = json.loads(Path(path).read_text())
    kind = data.pop("type")
    classes = {
        c.__name__: c
        for c in (TokenizerTrainConfig, LAMTrainConfig, IDMTrainConfig, MAETrainConfig, DynamicsTrainConfig)
    }
    if kind not in classes:
        raise ValueError(f"{path}: unknown config type {kind!r}")
    return from_dict(classes[kind], data)


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two configs (as dicts)."""
    a, b = to_dict(a), to_dict(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]
