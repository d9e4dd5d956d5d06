"""``jasmine actions``: what the latent actions mean, measured against a dataset's real actions.

Dimension key: B clips, T frames, K LAM codes, A ground-truth actions.

The LAM's code for the transition t-1 → t is paired with the real action taken after frame
t-1 (``actions[t-1]``: records store frame t, then the action taken from it). Over held-out
clips from distinct episodes this gives the K × A count matrix, the normalised mutual
information NMI = I(code; action) / ((H(code) + H(action)) / 2) (0: independent, 1: each
determines the other; the arithmetic normalisation of scikit-learn), a heatmap of P(action
| code), and each code's dominant real actions: the mapping ``jasmine play`` can bind keys
with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jasmine.config import DynamicsTrainConfig, LAMTrainConfig
from jasmine.data.dataset import DataError, action_meanings, read_metadata
from jasmine.data.loader import episode_clips
from jasmine.models.genie import from_lam_windows, lam_windows
from jasmine.train.runs import run_config


@dataclass(frozen=True)
class ActionsArgs:
    """Latent actions against ground-truth actions: count matrix, NMI, heatmap, each code's dominant actions."""

    run: Path
    """A LAM run, or a dynamics run with a LAM (frozen or co-trained)."""
    data: Path
    """Dataset with ground-truth actions."""
    split: str = "test"
    clips: int = 64
    """Clips, each from a distinct episode."""
    frames: int = 16
    """Frames per clip (frames - 1 transitions each)."""
    seed: int = 0
    top: int = 3
    """Dominant real actions listed per code."""
    out: Path | None = None
    """Output directory (default RUN/actions)."""


def count_matrix(codes: np.ndarray, actions: np.ndarray, num_codes: int, num_actions: int) -> np.ndarray:
    """counts[k, a]: transitions given code k whose real action was a."""
    counts = np.zeros((num_codes, num_actions), np.int64)
    np.add.at(counts, (np.ravel(codes), np.ravel(actions)), 1)
    return counts


def transition_counts(codes_BT1: np.ndarray, actions_BT: np.ndarray, num_codes: int, num_actions: int) -> np.ndarray:
    """Counts of clips' codes (entry t-1: the transition into frame t) against the real action taken after
    frame t-1 (``actions_BT[:, t-1]``); the one place codes and actions are paired."""
    return count_matrix(codes_BT1, actions_BT[:, :-1], num_codes, num_actions)


def nmi(counts: np.ndarray) -> float:
    """Normalised mutual information of the joint counts (arithmetic mean of the two entropies)."""
    p = counts / max(counts.sum(), 1)
    pk, pa = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pk, pa)[nz])).sum())

    def h(q):
        return float(-(q[q > 0] * np.log(q[q > 0])).sum())

    denom = (h(pk) + h(pa)) / 2
    return mi / denom if denom > 0 else 0.0


def load_lam(run: Path):
    """(LAM module, its window in frames) of a LAM run or of a dynamics run's LAM."""
    from jasmine.train.components import load_run

    cfg = run_config(run)
    if isinstance(cfg, LAMTrainConfig):
        _, lam, _ = load_run(run)
        return lam, cfg.seq_len
    if isinstance(cfg, DynamicsTrainConfig):
        _, genie, _ = load_run(run)
        if genie.lam is None:
            raise ValueError(f"--run {run} was trained with --gt-actions: it has no latent actions to compare")
        return genie.lam, genie.lam_window
    raise ValueError(f"--run {run} is a {type(cfg).__name__} run; jasmine actions needs a LAM or dynamics run")


def latent_actions(lam, window: int, frames_BTHWC: np.ndarray, batch: int = 16) -> np.ndarray:
    """LAM codes [B, T-1] of aligned clips; entry t-1 leads to frame t."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(lam)

    @jax.jit
    def infer(state, frames):
        x = frames.astype(jnp.float32) / 255.0
        ids = nnx.merge(graphdef, state).infer_actions(lam_windows(x, window))
        return from_lam_windows(ids, x.shape[0], x.shape[1])

    return np.concatenate(
        [np.asarray(infer(state, frames_BTHWC[i : i + batch])) for i in range(0, len(frames_BTHWC), batch)]
    )


def action_mapping(counts: np.ndarray, top: int = 3, meanings: list[str] | None = None) -> list[dict]:
    """Per code: how often it is used and its ``top`` most frequent real actions with P(action | code)."""
    names = meanings or [str(a) for a in range(counts.shape[1])]
    rows = []
    for k, row in enumerate(counts):
        n = int(row.sum())
        order = np.argsort(-row, kind="stable")[:top]
        rows.append(
            {
                "code": k,
                "transitions": n,
                "share": n / max(counts.sum(), 1),
                "actions": [
                    {"action": int(a), "name": names[a], "p": float(row[a] / n) if n else 0.0}
                    for a in order
                    if row[a] > 0
                ],
            }
        )
    return rows


def plot_heatmap(path: Path, counts: np.ndarray, meanings: list[str] | None, score: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cond = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * counts.shape[1], 1.2 + 0.45 * counts.shape[0]))
    im = ax.imshow(cond, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(counts.shape[1]), meanings or range(counts.shape[1]), rotation=90 if meanings else 0)
    ax.set_yticks(range(counts.shape[0]), [f"{k} (n={int(n)})" for k, n in enumerate(counts.sum(1))])
    ax.set_xlabel("ground-truth action")
    ax.set_ylabel("LAM code")
    ax.set_title(f"P(action | code), NMI {score:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def actions_report(args: ActionsArgs) -> dict:
    lam, window = load_lam(args.run)
    meta = read_metadata(args.data)
    num_actions = meta["num_actions"]
    if num_actions <= 0:
        raise DataError(f"{args.data / 'metadata.json'}: the dataset has no ground-truth actions to compare with")
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (one transition), got {args.frames}")
    clips = episode_clips(args.data, args.split, args.clips, args.frames, args.seed, align=window - 1)
    codes = latent_actions(lam, window, clips["frames"])
    counts = transition_counts(codes, clips["actions"], lam.cfg.vocab_size, num_actions)
    meanings = action_meanings(meta)
    result = {
        "run": str(args.run),
        "data": str(args.data),
        "split": args.split,
        "clips": args.clips,
        "transitions": int(counts.sum()),
        "nmi": nmi(counts),
        "counts": counts.tolist(),
        "action_meanings": meanings,
        "codes": action_mapping(counts, args.top, meanings),
    }
    out = args.out or Path(args.run) / "actions"
    out.mkdir(parents=True, exist_ok=True)
    (out / "actions.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_heatmap(out / "actions.png", counts, meanings, result["nmi"])
    print(
        f"NMI(LAM code; real action) = {result['nmi']:.3f} over {result['transitions']} transitions of "
        f"{args.clips} {args.split} clips"
    )
    for row in result["codes"]:
        acts = ", ".join(f"{a['name']} {a['p']:.0%}" for a in row["actions"]) or "-"
        print(f"  code {row['code']:2d}  {row['share']:6.1%} of transitions  {acts}")
    print(f"wrote {out / 'actions.json'}\nwrote {out / 'actions.png'}")
    return result
