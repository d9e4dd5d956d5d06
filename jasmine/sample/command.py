"""``jasmine sample``: roll a trained Genie out from ground-truth context; video + per-frame metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jasmine.models.fidelity import psnr_ssim
from jasmine.sample.clips import InferenceDtype, check_lengths, choose_actions, compute_dtype, load_genie, read_clips
from jasmine.sample.rollout import Rollout, SampleOptions, sample_options
from jasmine.viz import side_by_side, stack_rows, write_gif, write_mp4


@dataclass(frozen=True, kw_only=True)
class SampleArgs(SampleOptions):
    """Generate frames after C ground-truth context frames; write GT | generated as GIF and MP4."""

    run: Path
    """Dynamics run directory."""
    data: Path
    """Dataset to take context (and ground truth) clips from."""
    context: int = 1
    """Ground-truth context frames."""
    frames: int = 16
    """Total frames in the rollout, context included (may exceed the model's seq_len)."""
    actions: str = "lam"
    """lam (inferred from the GT clip) | gt | random | fixed:K | list:A,B,... (one id per frame after the first)."""
    split: str = "test"
    """Split to take clips from (one per episode)."""
    clips: int = 1
    """Number of clips (rows in the video)."""
    argmax: bool = False
    """Take the most likely token instead of sampling (and unmask the most confident first, without noise)."""
    seed: int = 0
    dtype: InferenceDtype = "run"
    """What the model computes in: run (its training --dtype; auto: bf16 on GPU, float32 on CPU) | float32 |
    bfloat16 (weights stored in bf16: on CPU MaskGIT and diffusion frames ~20% faster, causal ~5%; figures
    within noise: docs/benchmarks.md)."""
    out: Path | None = None
    """Output directory (default RUN/samples/)."""


def sample(args: SampleArgs) -> dict:
    cfg, genie = load_genie(args.run, args.dtype)
    check_lengths(args.context, args.frames, cfg.seq_len)
    clips = read_clips(genie, args.data, args.split, args.clips, args.frames, args.seed, cfg.image_size)
    actions = choose_actions(args.actions, genie, clips, np.random.default_rng(args.seed))
    opts = sample_options(args, **({"temperature": 0.0} if args.argmax else {}))
    roll = Rollout(genie, cfg.seq_len, opts)
    ctx = roll.encode(clips["frames"][:, : args.context])
    t0 = time.perf_counter()
    ids = jax.block_until_ready(
        roll.run(ctx, actions, jax.random.key(args.seed), num_frames=args.frames - args.context)
    )
    seconds = time.perf_counter() - t0
    gen = roll.decode(ids)
    gt = clips["frames"].astype(np.float32) / 255.0
    psnr, ssim = psnr_ssim(gt, gen)
    out = args.out or Path(args.run) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sample_{args.split}_c{args.context}_f{args.frames}_{args.actions.split(':')[0]}_seed{args.seed}"
    video = stack_rows(*[side_by_side(gt[b], gen[b]) for b in range(args.clips)])
    write_gif(out / f"{stem}.gif", video)
    has_mp4 = write_mp4(out / f"{stem}.mp4", video)
    metrics = {
        "run": str(args.run),
        "context": args.context,
        "frames": args.frames,
        "actions_source": args.actions,
        "episodes": clips["episode"].tolist(),
        "starts": clips["start"].tolist(),
        "actions": actions.tolist(),
        "dynamics": genie.dynamics.family,
        "dtype": compute_dtype(cfg, args.dtype),
        **{
            k: getattr(roll.opts, k)
            for k in ("steps", "temperature", "choice_temperature", "ordinal", "top_k", "context_noise")
        },
        "cache": args.cache,
        "seconds": seconds,
        "frames_per_s": args.clips * (args.frames - args.context) / seconds,
        "per_frame": {"psnr": psnr.mean(0).tolist(), "ssim": ssim.mean(0).tolist()},
        "mean_generated": {
            "psnr": float(psnr[:, args.context :].mean()),
            "ssim": float(ssim[:, args.context :].mean()),
        },
    }
    (out / f"{stem}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"generated {args.frames - args.context} frames x {args.clips} clip(s) in {seconds:.1f}s "
        f"({metrics['frames_per_s']:.1f} frames/s); generated frames: PSNR {metrics['mean_generated']['psnr']:.2f} dB, "
        f"SSIM {metrics['mean_generated']['ssim']:.3f}"
    )
    for ext in ("gif", "mp4", "json"):
        if ext != "mp4" or has_mp4:
            print(f"wrote {out / f'{stem}.{ext}'}")
    return metrics
