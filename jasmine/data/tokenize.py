"""``jasmine data tokenize``: frame records → token-id records (same record format and layout).

Dimension key: W windows in a batch, S window length (the tokenizer's seq_len),
H/W/C frame shape, N tokens per frame.

Each record's frames are encoded in consecutive windows of S frames. The encoder is causal
in time, so zero-padding a short last window changes nothing before the padding. With
``--lam``, latent actions are inferred on windows overlapping by one frame, so every frame
t >= 1 is encoded together with frame t-1. Shards keep the source's record boundaries,
and metadata.json describes the new arrays and which tokenizer (and LAM) made them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jasmine import config as C
from jasmine.data.dataset import METADATA, DataError, iter_records, read_metadata, split_shards
from jasmine.data.loader import record_arrays
from jasmine.data.records import ShardWriter, encode_record, write_json_atomic


@dataclass(frozen=True)
class TokenizeArgs:
    """Pre-tokenize a frame dataset so dynamics training skips the tokenizer encoder."""

    tokenizer: Path
    """Tokenizer run directory."""
    data: Path
    """Frame dataset directory."""
    out: Path
    """Output dataset directory."""
    lam: Path | None = None
    """LAM run directory: also store its latent actions (needed to train dynamics with a frozen LAM)."""
    batch_size: int = 64
    """Windows encoded per call."""
    overwrite: bool = False


def encode_windows(fn, records: list[np.ndarray], size: int, stride: int, batch: int) -> list[list[tuple[int, np.ndarray]]]:
    """Apply ``fn`` to windows of ``size`` frames every ``stride`` frames of each record, batching
    windows across records; returns per record a list of (start, output)."""
    jobs = [(r, s) for r, frames in enumerate(records) for s in range(0, len(frames), stride)
            if s == 0 or s + (size - stride) < len(frames)]
    results: list[list[tuple[int, np.ndarray]]] = [[] for _ in records]
    shape = records[0].shape[1:]
    for b in range(0, len(jobs), batch):
        part = jobs[b : b + batch]
        wins = np.zeros((batch, size, *shape), records[0].dtype)  # fixed shape: one compilation
        for i, (r, s) in enumerate(part):
            chunk = records[r][s : s + size]
            wins[i, : len(chunk)] = chunk
        out = np.asarray(fn(wins))
        for i, (r, s) in enumerate(part):
            results[r].append((s, out[i]))
    return results


def _bind(module: nnx.Module, fn):
    """Jit ``fn(module, x)`` with the module's arrays as arguments (not baked-in constants)."""
    graphdef, state = nnx.split(module)
    jitted = jax.jit(lambda st, x: fn(nnx.merge(graphdef, st), x))
    return lambda x: jitted(state, x)


def _tokenize_group(group, encode, S, grid, lam_fn, lam_cfg, batch) -> list[dict[str, np.ndarray]]:
    frames = [arrays["frames"] for arrays, _ in group]
    outs = []
    for (arrays, _), wins in zip(group, encode_windows(encode, frames, S, S, batch)):
        n = len(arrays["frames"])
        tokens = np.zeros((n, grid[0] * grid[1]), np.int32)
        for s, ids in wins:
            tokens[s : s + S] = ids[: n - s]
        outs.append({"tokens": tokens, **({"actions": arrays["actions"]} if "actions" in arrays else {})})
    if lam_fn is not None:
        L = lam_cfg.seq_len
        for out, wins in zip(outs, encode_windows(lam_fn, frames, L, L - 1, batch)):
            n = len(out["tokens"])
            lat = np.zeros(n, np.int32)
            for s, a in wins:
                lat[s + 1 : s + L] = a[: max(n - s - 1, 0)]
            out["latent_actions"] = lat
    return outs


def tokenize(args: TokenizeArgs) -> dict:
    from jasmine.train.loop import load_run

    if (args.out / METADATA).exists() and not args.overwrite:
        raise DataError(f"{args.out} already holds a dataset ({METADATA} exists); pass --overwrite to replace it")
    meta = read_metadata(args.data)
    if "frames" not in record_arrays(meta):
        raise DataError(f"--data {args.data} holds no frames (already tokenized?)")
    tok_cfg, tok, _ = load_run(args.tokenizer)
    if tuple(tok_cfg.image_size) != tuple(meta["frame_shape"]):
        raise DataError(f"--tokenizer {args.tokenizer} was trained on {list(tok_cfg.image_size)} frames but --data "
                        f"{args.data} holds {list(meta['frame_shape'])} frames")
    S = tok_cfg.seq_len
    encode = _bind(tok, lambda m, x: m.encode(x.astype(jnp.float32) / 255.0))
    lam_fn, lam_cfg = None, None
    if args.lam is not None:
        lam_cfg, lam, _ = load_run(args.lam)
        lam_fn = _bind(lam, lambda m, x: m.infer_actions(x.astype(jnp.float32) / 255.0))
    (args.out / METADATA).unlink(missing_ok=True)
    grid = [d // tok_cfg.model.patch_size for d in tok_cfg.image_size[:2]]
    out_meta = {**{k: v for k, v in meta.items() if k not in ("splits", "arrays")}, "splits": {}}
    out_meta["arrays"] = {"tokens": {"dtype": "int32", "shape": [grid[0] * grid[1]]}}
    if meta["num_actions"] > 0:
        out_meta["arrays"]["actions"] = {"dtype": "int32", "shape": []}
    if lam_fn is not None:
        out_meta["arrays"]["latent_actions"] = {"dtype": "int32", "shape": []}
        out_meta["lam"] = {"run": str(args.lam), "config": C.to_dict(lam_cfg.model)}
    out_meta["tokenizer"] = {"run": str(args.tokenizer), "config": C.to_dict(tok_cfg.model), "grid": grid,
                             "vocab": tok_cfg.model.num_latents, "window": S}
    out_meta["source_dataset"] = str(args.data)
    t0, frames_done = time.perf_counter(), 0
    total = sum(info["records"] for info in meta["splits"].values())
    with tqdm(total=total, unit="rec", desc="tokenize", dynamic_ncols=True) as bar:
        for split, info in meta["splits"].items():
            with ShardWriter(args.out / split, records_per_shard=10**9) as writer:
                shards = split_shards(args.data, meta, split)
                rec_iter = iter_records(args.data, meta, split)
                for _, lengths in shards:
                    writer.records_per_shard = len(lengths)  # keep the source's shard layout
                    group = [next(rec_iter) for _ in lengths]
                    for (arrays, rec_meta), out in zip(group, _tokenize_group(group, encode, S, grid, lam_fn, lam_cfg,
                                                                             args.batch_size)):
                        writer.write(encode_record(out, rec_meta), len(arrays["frames"]))
                        frames_done += len(arrays["frames"])
                        bar.update()
                    bar.set_postfix(split=split, fps=f"{frames_done / (time.perf_counter() - t0):.0f}")
            out_meta["splits"][split] = {**info, "shards": [{"file": f"{split}/{f}", "lengths": ls} for f, ls in writer.shards]}
    write_json_atomic(args.out / METADATA, out_meta)
    out_meta["seconds"] = time.perf_counter() - t0
    return out_meta
