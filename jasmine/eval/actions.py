"""``jasmine actions``: what the latent actions mean, measured against a dataset's real actions and chance.

Dimension key: B clips, T frames, K LAM codes, A ground-truth actions, F LAM feature width.

The LAM's code for the transition t-1 → t is paired with the real action taken after frame t-1 (``actions[t-1]``:
records store frame t, then the action taken from it). Held-out transitions come from whole episodes of the test
split (``--transitions``, 10,000 by default). Reported, each beside its chance level (``jasmine.eval.agreement``):
NMI and AMI against the raw actions and against the environment's *effective* action classes (ids the game treats
alike share a class, recorded by each generator), with a permutation null that pairs each clip's codes with the
actions of a clip from another episode; a linear probe from the LAM's pre-quantisation output to the effective
class (fit on the train split, scored on the test split) beside the majority-class rate; the K × A count matrix, a
heatmap of P(action | code) and each code's dominant actions (the mapping ``jasmine play`` binds keys with); the
same agreement for codes found by k-means on the LAM's features (fit on the train split: the keys a LAM with more
capacity than keys, or a continuous one, would give); and
each code's share of the train split's transitions (what the dynamics trained on: ``jasmine eval`` draws its random
actions from it); and, for a LAM, whether its decoder uses its codes at all (``jasmine.eval.code_use``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.config import DynamicsTrainConfig, LAMTrainConfig
from jasmine.data.dataset import DataError, action_meanings, effective_actions, read_metadata
from jasmine.data.loader import episode_windows
from jasmine.eval.agreement import agreement, kmeans_codes, linear_probe
from jasmine.eval.code_use import code_use, code_use_line
from jasmine.models.genie import from_lam_windows, lam_windows
from jasmine.train.runs import run_config


@dataclass(frozen=True)
class ActionsArgs:
    """Latent actions against real actions: NMI and AMI beside permutation nulls, a linear probe, the mapping."""

    run: Path
    """A LAM run, a dynamics run with a LAM (frozen or co-trained), or an IDM run (the supervised ceiling)."""
    data: Path
    """Dataset with ground-truth actions."""
    split: str = "test"
    """Held-out split measured."""
    transitions: int = 10_000
    """Held-out transitions measured: whole episodes in a seeded order until this many (or the split's end)."""
    probe_split: str = "train"
    """Split the linear probe is fit on (it is scored on --split); its code shares are what eval's random
    actions are drawn from."""
    frames: int = 16
    """Frames per clip read at once (the permutation null moves whole clips)."""
    permutations: int = 1000
    """Draws of the permutation null."""
    seed: int = 0
    top: int = 3
    """Dominant real actions listed per code."""
    kmeans: int | None = None
    """Clusters of the LAM's features (k-means fit on --probe-split), scored against the effective classes like the
    codes are. None: one per effective class; 0: off."""
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


def load_lam(run: Path):
    """(LAM module, its window in frames) of a LAM run, of its supervised ceiling (an IDM run: its codes are its
    predicted classes) or of a dynamics run's LAM."""
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


def latent_actions(lam, window: int, frames_BTHWC: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """LAM codes [B, T-1] of aligned clips (entry t-1 leads to frame t) and the encoder's output before
    quantisation [B, T-1, F]. Every call runs one compiled program per (model, window, clip shape): the last
    batch is padded to ``batch`` clips."""
    graphdef, state = nnx.split(lam)
    parts = []
    for i in range(0, len(frames_BTHWC), batch):
        chunk = frames_BTHWC[i : i + batch]
        pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
        codes, h = jax.device_get(_infer_actions(graphdef, window, state, np.concatenate([chunk, pad])))
        parts.append((codes[: len(chunk)], h[: len(chunk)]))
    return np.concatenate([c for c, _ in parts]), np.concatenate([h for _, h in parts]).astype(np.float32)


@partial(jax.jit, static_argnums=(0, 1))
def _infer_actions(graphdef, window: int, state, frames_BTHWC):
    x = frames_BTHWC.astype(jnp.float32) / 255.0
    model = nnx.merge(graphdef, state)
    h = model.features(lam_windows(x, window))
    ids = model.codes(h)
    return from_lam_windows(ids, x.shape[0], x.shape[1]), from_lam_windows(h, x.shape[0], x.shape[1])


def window_frames(frames: int, window: int) -> int:
    """Clip length near ``frames`` whose LAM windows (every window-1 frames) tile it exactly."""
    return 1 + (window - 1) * max(1, (frames - 1) // (window - 1))


def split_codes(lam, window: int, data: Path, split: str, transitions: int, frames: int, seed: int) -> dict:
    """Codes, features and real actions of ``transitions`` transitions of ``split`` (whole episodes)."""
    clips = episode_windows(data, split, window_frames(frames, window), transitions, seed, align=window - 1)
    codes, feats = latent_actions(lam, window, clips["frames"])
    return {
        "codes": codes,
        "features": feats,
        "actions": clips.get("actions"),
        "episode": clips["episode"],
        "frames": clips["frames"],
    }


def measure(
    lam,
    window: int,
    data: Path,
    *,
    split: str = "test",
    probe_split: str = "train",
    transitions: int = 10_000,
    frames: int = 16,
    permutations: int = 1000,
    seed: int = 0,
    kmeans: int | None = None,
) -> dict:
    """Every latent-action figure of ``jasmine actions`` (see the module docstring), as a dict.

    Without real actions in ``data`` only the code shares are measured; without ``probe_split`` the shares
    come from ``split`` and there is no probe (``share_split`` says which).
    """
    meta = read_metadata(data)
    num_actions, vocab = int(meta["num_actions"]), int(lam.num_codes)
    test = split_codes(lam, window, data, split, transitions, frames, seed)
    res: dict = {
        "split": split,
        "transitions": int(test["codes"].size),
        "episodes": len(np.unique(test["episode"])),
        "vocab": vocab,
        "test_code_share": (np.bincount(test["codes"].ravel(), minlength=vocab) / test["codes"].size).tolist(),
    }
    try:
        train = split_codes(lam, window, data, probe_split, transitions, frames, seed)
    except DataError as e:
        train, res["share_split"], res["probe_missing"] = None, split, str(e)
    else:
        res["share_split"] = probe_split
    ref = train or test
    if hasattr(lam, "decode") and vocab > 1 and len(np.unique(test["episode"])) > 1:  # a LAM with codes to swap
        res["code_use"] = code_use(lam, window, test["frames"], test["codes"], test["episode"], seed=seed)
    res["train_code_share"] = (np.bincount(ref["codes"].ravel(), minlength=vocab) / ref["codes"].size).tolist()
    if not num_actions:
        return res
    names, of_action = effective_actions(meta, Path(data) / "metadata.json")
    for part, where in ((test, split), (train, probe_split)):
        if part is not None and (part["actions"].min() < 0 or part["actions"].max() >= num_actions):
            raise DataError(f"{Path(data) / where}: actions outside 0..{num_actions - 1} (metadata's num_actions)")
    real = test["actions"][:, :-1]
    if len(real) < 2:
        res["agreement_missing"] = f"{split} holds a single window of {real.shape[1] + 1} frames: no null to draw"
        return res
    res.update(
        action_meanings=action_meanings(meta) or [str(a) for a in range(num_actions)],
        effective_names=names,
        raw=agreement(test["codes"], real, episode_B=test["episode"], permutations=permutations, seed=seed),
        effective=agreement(
            test["codes"], of_action[real], episode_B=test["episode"], permutations=permutations, seed=seed
        ),
        counts=count_matrix(test["codes"], real, vocab, num_actions).tolist(),
        **(
            {"train_counts": count_matrix(train["codes"], train["actions"][:, :-1], vocab, num_actions).tolist()}
            if train is not None
            else {}
        ),
        effective_counts=count_matrix(test["codes"], of_action[real], vocab, len(names)).tolist(),
    )
    if train is not None:
        F = test["features"].shape[-1]
        try:
            res["probe"] = linear_probe(
                train["features"].reshape(-1, F),
                of_action[train["actions"][:, :-1]].ravel(),
                test["features"].reshape(-1, F),
                of_action[real].ravel(),
                seed=seed,
            )
        except ValueError as e:
            res["probe_missing"] = str(e)
        k = len(names) if kmeans is None else kmeans
        if k:
            codes = kmeans_codes(
                train["features"].reshape(-1, F), test["features"].reshape(-1, F), k, seed=seed
            ).reshape(test["codes"].shape)
            res["kmeans"] = {
                "k": k,
                **agreement(codes, of_action[real], episode_B=test["episode"], permutations=permutations, seed=seed),
            }
    return res


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


MAX_SHOWN = 32
"""Codes listed and drawn: all of a small vocabulary, else the most used of those in use (an FSQ LAM has
thousands)."""


def shown_codes(counts_KA: np.ndarray) -> np.ndarray:
    """Every code when there are at most ``MAX_SHOWN``, else the used codes, most used first, at most ``MAX_SHOWN``."""
    if len(counts_KA) <= MAX_SHOWN:
        return np.arange(len(counts_KA))
    n_K = counts_KA.sum(1)
    return np.argsort(-n_K, kind="stable")[: max(1, min(MAX_SHOWN, int((n_K > 0).sum())))]


def plot_heatmap(path: Path, res: dict, shown: np.ndarray) -> None:
    """P(action | code) against the raw actions and against the effective classes, side by side, for the codes
    ``shown`` (``shown_codes``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("counts", "action_meanings", "raw"), ("effective_counts", "effective_names", "effective")]
    widths = [len(res[names]) for _, names, _ in panels]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.45 * sum(widths), 1.5 + 0.45 * len(shown)), width_ratios=widths)
    for ax, (key, names, part) in zip(axes, panels, strict=True):
        counts = np.asarray(res[key])[shown]
        im = ax.imshow(counts / np.maximum(counts.sum(1, keepdims=True), 1), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(counts.shape[1]), res[names], rotation=90)
        ax.set_yticks(range(counts.shape[0]), [f"{k} (n={int(n)})" for k, n in zip(shown, counts.sum(1), strict=True)])
        ax.set_xlabel(f"{part} action")
        ax.set_ylabel("LAM code")
        a = res[part]["ami"]
        ax.set_title(f"P(action | code)\nAMI {a['value']:.3f} (null p99 {a['null_p99']:.3f})", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.03)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def summary_lines(res: dict) -> list[str]:
    """The figures in words: each score beside its null."""
    lines = [
        f"LAM codes against real actions over {res['transitions']:,} transitions of {res['episodes']} "
        f"{res['split']} episodes (null: {res['raw']['permutations']} pairings with other episodes' actions):",
        f"  {'':24s} {'value':>7s} {'null p95':>9s} {'null p99':>9s} {'p':>7s}",
    ]
    for part, n in (("effective", len(res["effective_names"])), ("raw", len(res["action_meanings"]))):
        for m in ("ami", "nmi"):
            e = res[part][m]
            lines.append(
                f"  {m.upper()}, {part} ({n} classes){'':{max(0, 9 - len(part))}s} {e['value']:7.3f} "
                f"{e['null_p95']:9.3f} {e['null_p99']:9.3f} {e['p_value']:7.3f}"
            )
    if res.get("probe"):
        p = res["probe"]
        lines += [
            f"  linear probe, LAM features -> effective class (fit on {p['train_transitions']:,} "
            f"{res['share_split']} transitions):",
            f"    accuracy {p['accuracy']:.3f} (majority class {p['majority']:.3f}, shuffled labels "
            f"{p['shuffled']:.3f})",
            f"    balanced accuracy {p['balanced_accuracy']:.3f} (chance {p['balanced_chance']:.3f}, shuffled labels "
            f"{p['balanced_shuffled']:.3f})",
        ]
    elif res.get("probe_missing"):
        lines.append(f"  no linear probe: {res['probe_missing']}")
    if res.get("kmeans"):
        km, n = res["kmeans"], len(res["effective_names"])
        lines.append(
            f"  k-means codes ({km['k']} clusters of the LAM features, fit on {res['share_split']}), effective "
            f"({n} classes): AMI {km['ami']['value']:.3f} (null p99 {km['ami']['null_p99']:.3f}), NMI "
            f"{km['nmi']['value']:.3f} (null p99 {km['nmi']['null_p99']:.3f})"
        )
    if res.get("code_use"):
        lines.append(code_use_line(res["code_use"]))
    used = sum(s > 0 for s in res["train_code_share"])
    lines.append(f"  codes used on the {res['share_split']} split: {used} of {res['vocab']}")
    return lines


def actions_report(args: ActionsArgs) -> dict:
    lam, window = load_lam(args.run)
    meta = read_metadata(args.data)
    if meta["num_actions"] <= 0:
        raise DataError(f"{args.data / 'metadata.json'}: the dataset has no ground-truth actions to compare with")
    if args.frames < 2 or args.transitions < 1 or args.permutations < 1 or (args.kmeans or 0) < 0:
        raise ValueError(
            f"need --frames >= 2, --transitions >= 1, --permutations >= 1 and --kmeans >= 0 "
            f"(got {args.frames}, {args.transitions}, {args.permutations}, {args.kmeans})"
        )
    res = measure(
        lam,
        window,
        args.data,
        split=args.split,
        probe_split=args.probe_split,
        transitions=args.transitions,
        frames=args.frames,
        permutations=args.permutations,
        seed=args.seed,
        kmeans=args.kmeans,
    )
    res = {"run": str(args.run), "data": str(args.data), **res}
    res["codes"] = action_mapping(np.asarray(res["counts"]), args.top, res["action_meanings"])
    res["codes_effective"] = action_mapping(np.asarray(res["effective_counts"]), args.top, res["effective_names"])
    out = args.out or Path(args.run) / "actions"
    out.mkdir(parents=True, exist_ok=True)
    (out / "actions.json").write_text(json.dumps(res, indent=2) + "\n")
    shown = shown_codes(np.asarray(res["counts"]))
    plot_heatmap(out / "actions.png", res, shown)
    print("\n".join(summary_lines(res)))
    for k in shown:
        row, eff = res["codes"][k], res["codes_effective"][k]
        acts = ", ".join(f"{a['name']} {a['p']:.0%}" for a in row["actions"]) or "-"
        effs = ", ".join(f"{a['name']} {a['p']:.0%}" for a in eff["actions"]) or "-"
        print(f"  code {row['code']:2d}  {row['share']:6.1%} of transitions  {effs}  |  {acts}")
    if len(shown) < res["vocab"]:
        used = int((np.asarray(res["counts"]).sum(1) > 0).sum())
        print(f"  ({len(shown)} most used codes shown; {used} of {res['vocab']} in use on the {res['split']} split)")
    print(f"wrote {out / 'actions.json'}\nwrote {out / 'actions.png'}")
    return res
