"""``jasmine eval``: autoregressive rollouts on held-out clips against two baselines.

Protocol: ``--clips`` clips from as many distinct episodes of the **test** split (held-out
levels; val is what training validates on). Each clip starts where the model's encoding
rule lets it. Per clip: C ground-truth context frames, then the model generates the rest
with the actions the LAM infers from the ground-truth clip (ground-truth actions for
--gt-actions models). Baselines on the same clips: the tokenizer's reconstruction (the
ceiling: what a perfect dynamics model could reach), copying the last context frame, and copying its tokens
through the tokenizer (model − that is the dynamics against copying, without the tokenizer's error).
Controllability (Genie §3): ΔtPSNR = PSNR(x_t, x̂_t) − PSNR(x_t, x̂'_t) at clip frame t (default 4), with
x̂' generated from random actions and the same random numbers. The random actions are drawn from the
distribution the dynamics trained on (the LAM's code shares on the train split, or the real actions'), never
from codes it never saw. Beside it, GenieRedux's variant: the same actions up to t−1 and the action into
frame t swapped for another code in use. With a LAM and a dataset with real actions, the latent-action
figures of ``jasmine actions`` (AMI and NMI beside permutation nulls, the linear probe) are reported too.
Intervals are 95% percentile bootstraps over episodes (``jasmine.eval.metrics``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from jasmine.data.dataset import action_meanings, read_metadata
from jasmine.eval.metrics import code_usage, psnr_ssim, summarise_rollouts
from jasmine.eval.report import plot_curves, summary_lines, write_report
from jasmine.eval.steering import (
    action_codes,
    action_shares,
    bind_keys,
    direction_scores,
    real_directions_of,
    swap_action,
    video_shift,
)
from jasmine.eval.teacher import summarise, teacher_forced_sums
from jasmine.models.digits import SamplingOptions
from jasmine.sample.clips import (
    InferenceDtype,
    check_lengths,
    choose_actions,
    compute_dtype,
    load_genie,
    num_action_codes,
    read_clips,
)
from jasmine.sample.rollout import Rollout, sample_options
from jasmine.viz import side_by_side, stack_rows, write_gif

SOURCES = ("model", "random_actions", "swapped_action", "key_mapped", "tokenizer", "copy_last", "copy_last_tokens")


def copy_last_ids(ids_BT, context: int) -> np.ndarray:
    """Token ids (or latents) [B, T, ...] whose frames from ``context`` on repeat frame ``context - 1``'s: what a
    dynamics model that predicts "no change" would hand the tokenizer's decoder."""
    ids = np.array(ids_BT)
    ids[:, context:] = ids[:, context - 1 : context]
    return ids


@dataclass(frozen=True, kw_only=True)
class EvalArgs(SamplingOptions):
    """Evaluate a dynamics run: per-frame PSNR/SSIM, baselines, ΔtPSNR, bootstrap CIs over episodes, report."""

    run: Path
    """Dynamics run directory."""
    data: Path
    """Dataset directory holding the held-out split."""
    clips: int = 32
    """Clips, each from a distinct episode."""
    split: str = "test"
    """Held-out split (test: levels never seen in training or validation)."""
    context: int = 1
    frames: int = 16
    """Total frames per clip, context included."""
    delta_t: int = 4
    """Clip frame index t of the controllability metric ΔtPSNR."""
    batch_size: int = 8
    seed: int = 0
    gifs: int = 4
    """Clips drawn in the report GIF."""
    action_transitions: int = 10_000
    """Transitions measured per split for the latent-action figures and the code shares (see jasmine actions)."""
    permutations: int = 1000
    """Draws of the latent-action figures' permutation null."""
    teacher_forced: bool = True
    """MaskGIT: also the teacher-forced cross-entropy at fixed mask ratios with clean and masked context
    (jasmine.eval.teacher)."""
    dtype: InferenceDtype = "run"
    """What the model computes in: run (its training --dtype; auto: bf16 on GPU, float32 on CPU) | float32 |
    bfloat16 (weights stored in bf16: on CPU MaskGIT and diffusion frames ~20% faster, causal ~5%; figures
    within noise: docs/benchmarks.md)."""
    out: Path | None = None
    """Output directory (default RUN/eval)."""


def evaluate(args: EvalArgs) -> dict:
    cfg, genie = load_genie(args.run, args.dtype)
    check_lengths(args.context, args.frames, cfg.seq_len)
    if not args.context <= args.delta_t < args.frames:
        raise ValueError(f"--delta-t {args.delta_t} must index a generated frame: {args.context} <= t < {args.frames}")
    source = "gt" if genie.lam is None else "lam"
    clips = read_clips(genie, args.data, args.split, args.clips, args.frames, args.seed, cfg.image_size)
    roll = Rollout(genie, cfg.seq_len, sample_options(args))
    rng = np.random.default_rng(args.seed)
    shares, latent = action_shares(genie, args.data, args.split, args.action_transitions, args.permutations, args.seed)
    counts = np.asarray(latent["train_counts"]) if latent and "train_counts" in latent else None
    mapping = action_codes(counts) if counts is not None else None  # play's binding of every real action
    meanings = action_meanings(read_metadata(args.data))
    bound = bind_keys(meanings, num_action_codes(genie), counts_KA=counts, gt_actions=genie.lam is None)
    horizon = args.frames - args.context  # the rollouts hold each key over every generated frame
    expected = real_directions_of(args.data, meanings, args.action_transitions, args.seed, horizon) if bound else {}
    direction_keys = {k: c for k, c in bound.items() if k in expected and expected[k]["sign"] != 0}
    key_shifts, random_shifts = {k: [] for k in direction_keys}, []
    t = args.delta_t
    scores = {k: [] for k in SOURCES}
    previews, token_ids, teacher = [], [], {}
    teacher_forced = args.teacher_forced and genie.dynamics.maskgit_options
    t0 = time.perf_counter()
    for lo in tqdm(range(0, args.clips, args.batch_size), desc="eval", unit="batch", dynamic_ncols=True):
        batch = {k: v[lo : lo + args.batch_size] for k, v in clips.items()}
        gt = batch["frames"].astype(np.float32) / 255.0
        ids_gt = roll.encode(batch["frames"])
        token_ids.append(np.asarray(ids_gt))
        ctx = ids_gt[:, : args.context]
        key = jax.random.key(args.seed + lo)  # the same random numbers for both action sources

        def rollout(actions, ctx=ctx, key=key):
            return roll.decode(roll.run(ctx, actions, key, num_frames=args.frames - args.context))

        if teacher_forced:
            window = {k: v[:, : cfg.seq_len] for k, v in batch.items() if k in ("frames", "actions")}
            sums = teacher_forced_sums(genie, window, ids_gt[:, : cfg.seq_len], jax.random.fold_in(key, 1))
            teacher = {k: np.concatenate([teacher[k], v]) if k in teacher else v for k, v in sums.items()}
        actions = choose_actions(source, genie, batch, rng)
        swapped = swap_action(actions, t, shares, rng)
        videos = {
            "model": rollout(actions),
            "random_actions": rollout(rng.choice(len(shares), actions.shape, p=shares / shares.sum()).astype(np.int32)),
            **({"swapped_action": rollout(swapped)} if swapped is not None else {}),
            **({"key_mapped": rollout(mapping[batch["actions"][:, :-1]])} if mapping is not None else {}),
            "tokenizer": roll.decode(ids_gt),
            "copy_last": np.repeat(gt[:, args.context - 1 : args.context], args.frames, axis=1),
            "copy_last_tokens": roll.decode(copy_last_ids(ids_gt, args.context)),
        }
        videos["copy_last"][:, : args.context] = gt[:, : args.context]
        start = args.context - 1  # shifts from the last context frame on
        random_shifts += [video_shift(v[start:]) for v in videos["random_actions"]]
        for k, code in direction_keys.items():  # the key held from the last context frame on
            key_shifts[k] += [video_shift(v[start:]) for v in rollout(np.full_like(actions, code))]
        for name, video in videos.items():
            scores[name].append(psnr_ssim(gt, video))
        for b in range(min(args.gifs - len(previews), len(gt))):
            previews.append(
                side_by_side(gt[b], videos["tokenizer"][b], videos["model"][b], videos["random_actions"][b])
            )
    psnr = {k: np.concatenate([p for p, _ in v]) for k, v in scores.items() if v}
    ssim = {k: np.concatenate([s for _, s in v]) for k, v in scores.items() if v}
    results = {
        "run": str(args.run),
        "data": str(args.data),
        "split": args.split,
        "clips": args.clips,
        "context": args.context,
        "frames": args.frames,
        "dynamics": genie.dynamics.family,
        "dtype": compute_dtype(cfg, args.dtype),
        **{
            k: getattr(roll.opts, k)
            for k in ("steps", "temperature", "choice_temperature", "ordinal", "top_k", "context_noise")
        },
        "actions": source,
        "delta_t": args.delta_t,
        "seconds": time.perf_counter() - t0,
        "random_action_shares": shares.tolist(),
        "latent_actions": latent,
        "steering": {
            "bindings": bound,
            "real_directions": expected,
            "directions": direction_scores(
                {k: np.asarray(v) for k, v in key_shifts.items()}, np.asarray(random_shifts), expected, bound
            ),
        },
        "tokenizer_codes": (
            code_usage(np.concatenate(token_ids), genie.tokenizer.cfg.vocab_size)
            if np.issubdtype(token_ids[0].dtype, np.integer)
            else None
        ),  # MAE latents have no codes
        **summarise_rollouts(psnr, ssim, context=args.context, delta_t=args.delta_t, seed=args.seed),
        **({"teacher_forced": summarise(teacher, args.seed)} if teacher else {}),
        "per_clip": {
            "episode": clips["episode"].tolist(),
            "start": clips["start"].tolist(),
            "psnr": {k: v.tolist() for k, v in psnr.items()},
            "ssim": {k: v.tolist() for k, v in ssim.items()},
        },
    }
    out = args.out or Path(args.run) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_gif(out / "rollouts.gif", stack_rows(*previews))
    plot_curves(out / "psnr_ssim.png", results)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out / "report.md", results)
    print("\n" + "\n".join(summary_lines(results)))
    for name in ("report.md", "metrics.json", "psnr_ssim.png", "rollouts.gif"):
        print(f"wrote {out / name}")
    return results
