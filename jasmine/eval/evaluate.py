"""``jasmine eval``: autoregressive rollouts on held-out clips against two baselines.

Per clip: C ground-truth context frames, then the model generates the rest with the
actions the LAM infers from the ground-truth clip (ground-truth actions for --gt-actions
models). Baselines on the same clips: the tokenizer's reconstruction (the ceiling: what a
perfect dynamics model could reach) and copying the last context frame. Controllability
(Genie §3): ΔtPSNR = PSNR(x_t, x̂_t) − PSNR(x_t, x̂'_t), with x̂' generated from uniformly
random actions, at clip frame t (default 4).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from jasmine.eval.metrics import mean_ci, psnr_ssim
from jasmine.eval.report import plot_curves, write_report
from jasmine.sample.clips import check_lengths, choose_actions, load_genie, read_clips
from jasmine.sample.rollout import Rollout, SampleOptions
from jasmine.viz import side_by_side, stack_rows, write_gif


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a dynamics run: per-frame PSNR/SSIM with 95% CIs, baselines, ΔtPSNR, plot, report."""

    run: Path
    """Dynamics run directory."""
    data: Path
    """Dataset directory holding the held-out split."""
    clips: int = 32
    split: str = "val"
    context: int = 1
    frames: int = 16
    """Total frames per clip, context included."""
    delta_t: int = 4
    """Clip frame index t of the controllability metric ΔtPSNR."""
    batch_size: int = 8
    steps: int = 25
    """MaskGIT steps per frame (steps that fix no token are skipped: at most one model pass per token)."""
    temperature: float = 1.0
    seed: int = 0
    gifs: int = 4
    """Clips drawn in the report GIF."""
    out: Path | None = None
    """Output directory (default RUN/eval)."""


def evaluate(args: EvalArgs) -> dict:
    cfg, genie = load_genie(args.run)
    check_lengths(args.context, args.frames, cfg.seq_len)
    if not args.context <= args.delta_t < args.frames:
        raise ValueError(f"--delta-t {args.delta_t} must index a generated frame: {args.context} <= t < {args.frames}")
    source = "gt" if genie.lam is None else "lam"
    clips = read_clips(args.data, args.split, args.clips, args.frames, args.seed, cfg.image_size)
    roll = Rollout(genie, cfg.seq_len, SampleOptions(steps=args.steps, temperature=args.temperature))
    rng = np.random.default_rng(args.seed)
    scores = {k: [] for k in ("model", "random_actions", "tokenizer", "copy_last")}
    previews = []
    t0 = time.perf_counter()
    for lo in tqdm(range(0, args.clips, args.batch_size), desc="eval", unit="batch", dynamic_ncols=True):
        batch = {k: v[lo : lo + args.batch_size] for k, v in clips.items()}
        gt = batch["frames"].astype(np.float32) / 255.0
        ids_gt = roll.encode(batch["frames"])
        ctx = ids_gt[:, : args.context]
        key = jax.random.key(args.seed + lo)
        videos = {
            "model": roll.decode(roll.run(ctx, choose_actions(source, genie, batch, rng, cfg.seq_len), key,
                                          num_frames=args.frames - args.context)),
            "random_actions": roll.decode(roll.run(ctx, choose_actions("random", genie, batch, rng, cfg.seq_len), key,
                                                   num_frames=args.frames - args.context)),
            "tokenizer": roll.decode(ids_gt),
            "copy_last": np.repeat(gt[:, args.context - 1 : args.context], args.frames, axis=1),
        }
        videos["copy_last"][:, : args.context] = gt[:, : args.context]
        for name, video in videos.items():
            scores[name].append(psnr_ssim(gt, video))
        if len(previews) < args.gifs:
            for b in range(min(args.gifs - len(previews), len(gt))):
                previews.append(side_by_side(gt[b], videos["tokenizer"][b], videos["model"][b], videos["random_actions"][b]))
    seconds = time.perf_counter() - t0
    results = _summarise(args, scores, seconds, source)
    out = args.out or Path(args.run) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_gif(out / "rollouts.gif", stack_rows(*previews))
    plot_curves(out / "psnr_ssim.png", results, args.context)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out / "report.md", results, args)
    _print_summary(results, out)
    return results


def _summarise(args: EvalArgs, scores, seconds: float, source: str) -> dict:
    res = {"run": str(args.run), "data": str(args.data), "split": args.split, "clips": args.clips,
           "context": args.context, "frames": args.frames, "steps": args.steps, "temperature": args.temperature,
           "actions": source, "seconds": seconds, "per_frame": {}, "mean_generated": {}}
    gen = slice(args.context, args.frames)
    for name, parts in scores.items():
        psnr = np.concatenate([p for p, _ in parts])
        ssim = np.concatenate([s for _, s in parts])
        entry = {}
        for metric, vals in (("psnr", psnr), ("ssim", ssim)):
            mean, ci = mean_ci(vals)
            entry[metric] = mean.tolist()
            entry[f"{metric}_ci95"] = ci.tolist()
            m, c = mean_ci(vals[:, gen].mean(axis=1, keepdims=True))
            res["mean_generated"].setdefault(name, {})[metric] = float(m[0])
            res["mean_generated"][name][f"{metric}_ci95"] = float(c[0])
        res["per_frame"][name] = entry
        if name in ("model", "random_actions"):
            res.setdefault("_psnr_t", {})[name] = psnr[:, args.delta_t]
    delta = res["_psnr_t"]["model"] - res.pop("_psnr_t")["random_actions"]
    m, c = mean_ci(delta[:, None])
    res[f"delta_psnr_t{args.delta_t}"] = float(m[0])
    res[f"delta_psnr_t{args.delta_t}_ci95"] = float(c[0])
    return res


def _print_summary(res: dict, out: Path) -> None:
    print(f"\n{res['clips']} clips, {res['context']} context + {res['frames'] - res['context']} generated frames, "
          f"actions: {res['actions']} ({res['seconds']:.0f}s)")
    print(f"  {'':16} {'PSNR (dB)':>16} {'SSIM':>14}")
    for name, m in res["mean_generated"].items():
        print(f"  {name:16} {m['psnr']:8.2f} ± {m['psnr_ci95']:<5.2f} {m['ssim']:7.3f} ± {m['ssim_ci95']:.3f}")
    key = next(k for k in res if k.startswith("delta_psnr_t") and not k.endswith("ci95"))
    print(f"  {key} = {res[key]:.3f} ± {res[key + '_ci95']:.3f} dB")
    for name in ("report.md", "metrics.json", "psnr_ssim.png", "rollouts.gif"):
        print(f"wrote {out / name}")
