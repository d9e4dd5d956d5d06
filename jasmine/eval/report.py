"""The evaluation plot (PSNR and SSIM against frame index) and the Markdown report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"model": "model (inferred actions)", "random_actions": "model (random actions)",
          "tokenizer": "tokenizer reconstruction (ceiling)", "copy_last": "copy last context frame"}


def plot_curves(path: Path, res: dict, context: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for name, entry in res["per_frame"].items():
            y, ci = np.asarray(entry[metric]), np.asarray(entry[f"{metric}_ci95"])
            x = np.arange(len(y))
            ax.plot(x[context:], y[context:], marker="o", ms=3, label=LABELS.get(name, name))
            ax.fill_between(x[context:], (y - ci)[context:], (y + ci)[context:], alpha=0.2)
        ax.set_xlabel("frame index")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{res['clips']} held-out clips, {context} context frame(s); bands: 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metrics_table(res: dict) -> str:
    rows = ["| | PSNR (dB) | SSIM |", "|---|---|---|"]
    for name, m in res["mean_generated"].items():
        rows.append(f"| {LABELS.get(name, name)} | {m['psnr']:.2f} ± {m['psnr_ci95']:.2f} | "
                    f"{m['ssim']:.3f} ± {m['ssim_ci95']:.3f} |")
    return "\n".join(rows)


def write_report(path: Path, res: dict, args) -> None:
    key = f"delta_psnr_t{args.delta_t}"
    text = f"""# Evaluation of `{res['run']}`

{res['clips']} clips from `{res['data']}` ({res['split']} split): {res['context']} ground-truth context frame(s),
then {res['frames'] - res['context']} generated frames with {res['steps']} MaskGIT steps each (temperature
{res['temperature']}); actions: {res['actions']} (inferred from the ground-truth clip).

## Mean over generated frames (± 95% CI)

{metrics_table(res)}

**Controllability** Δ{args.delta_t}PSNR = PSNR(x, x̂) − PSNR(x, x̂′) at frame {args.delta_t}, x̂′ from random actions:
**{res[key]:.3f} ± {res[key + '_ci95']:.3f} dB** (positive: the inferred actions matter).

## Per frame

![PSNR and SSIM against frame index](psnr_ssim.png)

## Rollouts

Columns: ground truth | tokenizer reconstruction | model (inferred actions) | model (random actions).

![rollouts](rollouts.gif)
"""
    path.write_text(text)
