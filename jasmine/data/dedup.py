"""Exact duplicate episodes and frames, by content hash, within and across splits (``jasmine data dedup``).

A frame's hash is BLAKE2b-128 of its bytes; an episode's is the hash of its frames' hashes
and its actions. Content shared between splits leaks test data into training, so
``--fail-on-cross-split`` makes it an error (exit status 1) for pipelines to check.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from tqdm import tqdm

from jasmine.data.dataset import iter_records, read_metadata
from jasmine.data.records import write_json_atomic


@dataclass(frozen=True)
class DedupArgs:
    """Find exact duplicate episodes and frames within and across the splits of a dataset."""

    dir: tyro.conf.Positional[Path]
    """Dataset directory."""
    out: Path | None = None
    """JSON report (default: DIR/dedup.json)."""
    fail_on_cross_split: bool = False
    """Exit with status 1 when two splits share an episode or a frame."""
    examples: int = 10
    """Duplicate groups listed per kind in the report."""


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def find_duplicates(root: str | Path, examples: int = 10, progress: bool = True) -> dict:
    """Counts and example locations of repeated frames and episodes; a location is [split, episode, frame]."""
    meta = read_metadata(root)
    frames: dict[str, list] = defaultdict(list)  # hash -> [(split, episode, frame)]
    episodes: dict[str, list] = defaultdict(list)  # hash -> [(split, episode)]
    total = sum(info["frames"] for info in meta["splits"].values())
    with tqdm(total=total, unit="frame", desc="dedup", dynamic_ncols=True, disable=not progress) as bar:
        for split, info in meta["splits"].items():
            lengths = info.get("episode_lengths") or []
            e, t, ep_frames, ep_actions = 0, 0, [], []
            for arrays, _ in iter_records(root, meta, split):
                acts = arrays.get("actions")
                for i, frame in enumerate(arrays["frames"]):
                    h = _digest(np.ascontiguousarray(frame).tobytes())
                    frames[h].append((split, e, t))
                    ep_frames.append(h)
                    if acts is not None:
                        ep_actions.append(int(acts[i]))
                    t += 1
                bar.update(len(arrays["frames"]))
                if not lengths or t >= lengths[e]:  # unknown lengths: each record is an episode
                    key = _digest("".join(ep_frames).encode(), np.asarray(ep_actions, np.int64).tobytes())
                    episodes[key].append((split, e))
                    e, t, ep_frames, ep_actions = e + 1, 0, [], []

    def summary(groups: dict[str, list], what: str) -> dict:
        repeated = [locs for locs in groups.values() if len(locs) > 1]
        cross = [locs for locs in repeated if len({loc[0] for loc in locs}) > 1]
        pairs: dict[str, int] = defaultdict(int)
        for locs in cross:
            names = sorted({loc[0] for loc in locs})
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    pairs[f"{a}/{b}"] += 1
        within: dict[str, int] = defaultdict(int)
        for locs in repeated:
            for split in {loc[0] for loc in locs}:
                if (extra := sum(loc[0] == split for loc in locs) - 1) > 0:
                    within[split] += extra
        return {
            f"{what}": sum(len(v) for v in groups.values()),
            f"unique_{what}": len(groups),
            "duplicates_within_split": dict(within),
            "shared_across_splits": dict(pairs),
            "examples": [[list(loc) for loc in locs] for locs in (cross + repeated)[:examples]],
        }

    return {"dataset": str(Path(root)), "frames": summary(frames, "frames"), "episodes": summary(episodes, "episodes")}


def dedup(args: DedupArgs) -> dict:
    report = find_duplicates(args.dir, args.examples)
    out = args.out or Path(args.dir) / "dedup.json"
    write_json_atomic(out, report)
    for kind in ("episodes", "frames"):
        r = report[kind]
        print(
            f"{kind:8}  {r[kind]} total, {r['unique_' + kind]} unique; repeated within a split: "
            f"{r['duplicates_within_split'] or 0}; shared across splits: {r['shared_across_splits'] or 0}"
        )
    print(f"wrote {out}")
    report["cross_split"] = bool(report["frames"]["shared_across_splits"] or report["episodes"]["shared_across_splits"])
    return report
