"""``jasmine data inspect DIR``: counts, shapes, histograms, a contact sheet and a GIF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image
from tqdm import tqdm

from jasmine.data.dataset import SPLITS, iter_records, read_metadata
from jasmine.viz import write_gif


@dataclass(frozen=True)
class InspectArgs:
    """Summarise a dataset and write a PNG contact sheet and a GIF of a few episodes."""

    dir: tyro.conf.Positional[Path]
    """Dataset directory (holds metadata.json)."""
    out: Path | None = None
    """Where to write contact_sheet.png and episodes.gif (default: DIR/inspect)."""
    split: str = "train"
    """Split shown in the pictures."""
    episodes: int = 4
    """Episodes shown in the pictures."""
    max_records: int = 0
    """Records read per split for the action histogram (0 = all)."""
    dedup: bool = True
    """Count exact duplicate episodes and frames within and across splits (reads every frame)."""


def _bar_lines(labels: list[str], counts: np.ndarray, width: int = 40) -> list[str]:
    top = max(int(counts.max(initial=0)), 1)
    return [
        f"  {lab:>11} | {'#' * round(width * c / top):<{width}} {int(c)}"
        for lab, c in zip(labels, counts, strict=False)
    ]


def length_histogram(lengths: list[int], bins: int = 10) -> list[str]:
    counts, edges = np.histogram(np.asarray(lengths), bins=min(bins, max(len(set(lengths)), 1)))
    return _bar_lines([f"{edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(counts))], counts)


def _episode_frames(root: Path, meta: dict, split: str, n: int) -> list[np.ndarray]:
    episodes: dict[int, list[np.ndarray]] = {}
    for arrays, rec_meta in iter_records(root, meta, split):
        eid = rec_meta.get("episode_id", len(episodes))
        if eid not in episodes and len(episodes) == n:
            break
        episodes.setdefault(eid, []).append(arrays["frames"])
    return [np.concatenate(chunks) for chunks in episodes.values()]


def contact_sheet(episodes: list[np.ndarray], columns: int = 12, pad: int = 2) -> np.ndarray:
    """One row per episode, ``columns`` evenly spaced frames each, as uint8 [H', W', C]."""
    h, w, c = episodes[0].shape[1:]
    sheet = np.full((len(episodes) * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for r, ep in enumerate(episodes):
        for k, t in enumerate(np.linspace(0, len(ep) - 1, columns).round().astype(int)):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            sheet[y : y + h, x : x + w] = ep[t]
    return sheet


def inspect(args: InspectArgs) -> dict:
    meta = read_metadata(args.dir)
    out = args.out or args.dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    num_actions = meta["num_actions"]
    print(f"dataset   {args.dir}")
    print(f"source    {meta.get('source', '?')}   format v{meta['format_version']}")
    print(f"frames    uint8 {meta['frame_shape']} (H, W, C)   actions: {num_actions or 'none'}")
    summary = {}
    order = sorted(meta["splits"], key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    for split, info in ((s, meta["splits"][s]) for s in order):
        lengths = info.get("episode_lengths", [])
        print(
            f"\n[{split}] episodes {info['episodes']}  frames {info['frames']}  records {info['records']}  "
            f"shards {len(info['shards'])}  level seeds {info.get('level_seeds', '-')}"
        )
        if lengths:
            print(f"  episode length: min {min(lengths)}  mean {np.mean(lengths):.1f}  max {max(lengths)}")
            print("\n".join(length_histogram(lengths)))
        counts = np.zeros(num_actions, np.int64)
        if num_actions:
            total = info["records"] if not args.max_records else min(args.max_records, info["records"])
            for arrays, _ in tqdm(
                iter_records(args.dir, meta, split, args.max_records),
                total=total,
                desc=f"{split} actions",
                unit="rec",
                leave=False,
            ):
                counts += np.bincount(arrays["actions"], minlength=num_actions)[:num_actions]
            print("  action histogram:")
            print("\n".join(_bar_lines([str(a) for a in range(num_actions)], counts)))
        summary[split] = {"episodes": info["episodes"], "frames": info["frames"], "action_counts": counts.tolist()}
    if args.dedup:
        from jasmine.data.dedup import find_duplicates

        dup = find_duplicates(args.dir, progress=False)
        print("\nduplicates (exact content; details: jasmine data dedup)")
        for kind in ("episodes", "frames"):
            r = dup[kind]
            print(
                f"  {kind:8}  {r[kind] - r['unique_' + kind]} repeats; "
                f"within splits {r['duplicates_within_split'] or 0}; "
                f"shared across splits {r['shared_across_splits'] or 0}"
            )
        summary["duplicates"] = dup
    episodes = _episode_frames(args.dir, meta, args.split, args.episodes)
    Image.fromarray(contact_sheet(episodes).squeeze()).save(out / "contact_sheet.png")
    gif_len = min(64, min(len(e) for e in episodes))
    strip = np.concatenate([e[:gif_len] for e in episodes], axis=2)  # episodes side by side
    write_gif(out / "episodes.gif", strip, fps=15)
    print(f"\nwrote {out / 'contact_sheet.png'}\nwrote {out / 'episodes.gif'}")
    return summary
