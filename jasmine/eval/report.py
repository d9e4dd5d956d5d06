"""The evaluation plot (PSNR and SSIM against frame index), the summary table and the Markdown report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jasmine.eval.actions import summary_lines as action_lines

LABELS = {
    "model": "model (inferred actions)",
    "random_actions": "model (random actions)",
    "swapped_action": "model (action into frame t swapped)",
    "key_mapped": "model (play's key codes for the real actions)",
    "tokenizer": "tokenizer reconstruction (ceiling)",
    "copy_last": "copy last context frame",
    "copy_last_tokens": "copy last context frame's tokens (decoded)",
}


def _ci(m: dict, fmt: str) -> str:
    return f"{m['mean']:{fmt}} [{m['lo']:{fmt}}, {m['hi']:{fmt}}]"


def plot_curves(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    context = res["context"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("psnr", "ssim"), strict=False):
        for name, entry in res["per_frame"].items():
            e = entry[metric]
            y, lo, hi = (np.asarray(e[k]) for k in ("mean", "lo", "hi"))
            x = np.arange(len(y))
            ax.plot(x[context:], y[context:], marker="o", ms=3, label=LABELS.get(name, name))
            ax.fill_between(x[context:], lo[context:], hi[context:], alpha=0.2)
        ax.set_xlabel("frame index")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{res['clips']} clips from distinct {res['split']} episodes, {context} context frame(s); "
        f"bands: 95% bootstrap CI over episodes"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metrics_table(res: dict) -> str:
    rows = ["| | PSNR (dB) | SSIM |", "|---|---|---|"]
    for name, m in res["mean_generated"].items():
        rows.append(f"| {LABELS.get(name, name)} | {_ci(m['psnr'], '.2f')} | {_ci(m['ssim'], '.3f')} |")
    d = res["model_minus_copy_last"]
    rows.append(f"| model − copy last frame (paired) | {_ci(d['psnr'], '+.2f')} | {_ci(d['ssim'], '+.3f')} |")
    if "model_minus_copy_last_tokens" in res:
        d = res["model_minus_copy_last_tokens"]
        rows.append(
            f"| model − copy last frame's tokens (paired; the dynamics against copying) | {_ci(d['psnr'], '+.2f')} "
            f"| {_ci(d['ssim'], '+.3f')} |"
        )
    return "\n".join(rows)


def controllability_lines(res: dict) -> list[str]:
    t = res["delta_t"]
    lines = [f"Δ{t}PSNR = {_ci(res[f'delta_psnr_t{t}'], '.3f')} dB (random actions drawn by the train split's shares)"]
    if f"delta_psnr_t{t}_swap" in res:
        lines.append(
            f"Δ{t}PSNR, GenieRedux variant (only the action into frame {t} swapped) = "
            f"{_ci(res[f'delta_psnr_t{t}_swap'], '.3f')} dB"
        )
    if "key_mapped_minus_random" in res:
        lines.append(
            "key-mapped rollouts (play's code for each real action) − random codes, PSNR over generated frames = "
            f"{_ci(res['key_mapped_minus_random']['psnr'], '+.2f')} dB (paired)"
        )
    steering = res.get("steering") or {}
    if steering.get("bindings"):
        keys = ", ".join(f"{KEY_NAMES.get(k, k)}→{c}" for k, c in steering["bindings"].items())
        lines.append(f"keys bind to codes: {keys}")
    real = steering.get("real_directions") or {}
    if real:
        parts = [
            f"{KEY_NAMES.get(k, k)} {d['axis']} {d['shift']:+.2f} ± {2 * d['se']:.2f} px"
            + ("" if d["sign"] else " (not clearly either way: not scored)")
            for k, d in real.items()
        ]
        h = next(iter(real.values()))["horizon"]
        lines.append(
            f"the real game, each key held {h} frames (train split, its per-frame effects summed): " + ", ".join(parts)
        )
    for key, d in (steering.get("directions") or {}).items():
        way = {("x", 1): "right", ("x", -1): "left", ("y", 1): "down", ("y", -1): "up"}[(d["axis"], d["real_sign"])]
        lines.append(
            f"holding {KEY_NAMES.get(key, key)} (code {d['code']}) shifts the view {way} by >= 1 px, as the real "
            f"action does, from {d['correct']:.0%} of {d['starts']} held-out starts (random codes: {d['chance']:.0%})"
        )
    return lines


KEY_NAMES = {"ArrowLeft": "←", "ArrowRight": "→", "ArrowUp": "↑", "ArrowDown": "↓", " ": "Space"}


def summary_lines(res: dict) -> list[str]:
    codes, latent = res["tokenizer_codes"], res.get("latent_actions")
    return (
        [
            f"{res['clips']} clips from distinct {res['split']} episodes, {res['context']} context + "
            f"{res['frames'] - res['context']} generated frames, actions: {res['actions']} ({res['seconds']:.0f}s); "
            f"means over generated frames [95% bootstrap CI over episodes]:",
            "",
            metrics_table(res),
            "",
            *controllability_lines(res),
        ]
        + (
            [
                f"tokenizer codes on these clips: {codes['codes_used']} of {codes['vocab']} used, perplexity "
                f"{codes['perplexity']:.1f}"
            ]
            if codes
            else []
        )
        + (action_lines(latent) if latent and "raw" in latent else [])
        + teacher_lines(res.get("teacher_forced"))
    )


def teacher_lines(tf: dict | None) -> list[str]:
    """The teacher-forced cross-entropy table (MaskGIT), or nothing."""
    if not tf:
        return []

    def cell(b):
        return f"{b['mean']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}]"

    parts = ("clean", "masked", "masked_minus_clean")
    rows = [f"| {r} | " + " | ".join(cell(tf[p][str(r)]) for p in parts) + " |" for r in tf["ratios"]]
    return [
        "",
        "teacher-forced cross-entropy of the masked tokens (nats) at fixed mask ratios [95% CI over episodes]:",
        "",
        "| mask ratio | clean context (as sampled) | masked context (as trained) | masked − clean |",
        "|---|---|---|---|",
        *rows,
    ]


def sampling_text(res: dict) -> str:
    """How the frames were sampled, in words."""
    if res.get("context_noise") is not None:
        return (
            f"{res['steps']} denoising steps per frame along the training noise path (context frames at noise "
            f"{res['context_noise']})"
        )
    how = (
        f"{res['steps']} MaskGIT steps per frame (temperature {res['temperature']}, choice temperature "
        f"{res['choice_temperature']}"
        if res.get("steps")
        else f"one token at a time (temperature {res['temperature']}"
    )
    return (
        how
        + (f", top-{res['top_k']}" if res.get("top_k") else "")
        + (", ordinal decoding" if res.get("ordinal") else "")
        + ")"
        + (f", computed in {res['dtype']}" if res.get("dtype") else "")
    )


def _codes_text(codes: dict | None) -> str:
    if not codes:
        return "The tokenizer gives continuous latents (MAE): no codes to count; its reconstruction is the ceiling."
    return (
        f"Tokenizer codes on these clips: {codes['codes_used']} of {codes['vocab']} used, perplexity "
        f"{codes['perplexity']:.1f}."
    )


def _latent_text(latent: dict | None) -> str:
    if not latent or "raw" not in latent:
        return ""
    return "\n## Latent actions against real actions\n\n```\n" + "\n".join(action_lines(latent)) + "\n```\n"


def write_report(path: Path, res: dict) -> None:
    t = res["delta_t"]
    text = f"""# Evaluation of `{res["run"]}`

{res["clips"]} clips from distinct episodes of `{res["data"]}` ({res["split"]} split): {res["context"]} ground-truth
context frame(s), then {res["frames"] - res["context"]} generated frames
by the {res.get("dynamics", "maskgit")} dynamics,
{sampling_text(res)}; actions: {res["actions"]}
(inferred from the ground-truth clip). Intervals: 95% percentile bootstrap over episodes.

## Mean over generated frames

{metrics_table(res)}

**Controllability** Δ{t}PSNR = PSNR(x, x̂) − PSNR(x, x̂′) at frame {t}, x̂′ from random actions drawn by
the share each code has on the train split (positive: the inferred actions matter):

{chr(10).join("- " + line for line in controllability_lines(res))}
{_latent_text(res.get("latent_actions"))}
{_codes_text(res["tokenizer_codes"])}
{chr(10).join(teacher_lines(res.get("teacher_forced")))}

## Per frame

![PSNR and SSIM against frame index](psnr_ssim.png)

## Rollouts

Columns: ground truth | tokenizer reconstruction | model (inferred actions) | model (random actions).

![rollouts](rollouts.gif)
"""
    path.write_text(text)
