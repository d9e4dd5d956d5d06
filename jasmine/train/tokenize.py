"""``jasmine data tokenize``: frame records → token-id records (same record format and shard layout).

Dimension key: W windows in a batch, S window length, H/W/C frame shape, N tokens per frame.

Frames are encoded by the encoding rule of ``jasmine.models.genie``: the tokenizer on
chunks of its seq_len S from each episode's first frame, the LAM (``--lam``) on windows of
its seq_len L every L-1 frames. Episodes may span records and shards, so records are
gathered into whole episodes, encoded (windows batched across episodes) and split back.
Shards keep the source's record boundaries. metadata.json records which tokenizer and LAM
made the tokens: run, checkpoint step and parameter hash (dynamics training checks them).
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
from jasmine.data.loader import EpisodeIndex, record_arrays
from jasmine.data.output import Staging, check_output
from jasmine.data.records import ShardWriter, encode_record, write_json_atomic
from jasmine.train.components import load_run
from jasmine.train.runs import provenance


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
    tokenizer_step: int | None = None
    """Checkpoint step of --tokenizer (default: latest)."""
    lam_step: int | None = None
    """Checkpoint step of --lam (default: latest)."""
    batch_size: int = 64
    """Windows encoded per call."""
    overwrite: bool = False


def encode_windows(fn, episodes: list[np.ndarray], size: int, stride: int, batch: int) -> list[np.ndarray]:
    """Apply ``fn`` to windows of ``size`` frames every ``stride`` frames of each episode (zero-padded,
    batched across episodes); per episode, the outputs [windows, size, ...]."""
    jobs = [
        (e, s) for e, frames in enumerate(episodes) for s in range(0, max(len(frames) - (size - stride), 1), stride)
    ]
    results: list[list[np.ndarray]] = [[] for _ in episodes]
    for b in range(0, len(jobs), batch):
        part = jobs[b : b + batch]
        wins = np.zeros((batch, size, *episodes[0].shape[1:]), episodes[0].dtype)  # fixed shape: one compilation
        for i, (e, s) in enumerate(part):
            chunk = episodes[e][s : s + size]
            wins[i, : len(chunk)] = chunk
        out = np.asarray(fn(wins))
        for i, (e, _) in enumerate(part):
            results[e].append(out[i])
    return [np.stack(r) for r in results]


def _bind(module: nnx.Module, fn):
    """Jit ``fn(module, x)`` with the module's arrays as arguments (not baked-in constants)."""
    graphdef, state = nnx.split(module)
    jitted = jax.jit(lambda st, x: fn(nnx.merge(graphdef, st), x))
    return lambda x: jitted(state, x)


def _encode_episodes(frames: list[np.ndarray], encode, S: int, lam_fn, L: int, batch: int) -> list[dict]:
    """Per episode: tokens [T, N] on chunks of S; latent actions [T] (entry t leads to frame t) on LAM windows."""
    outs = [
        {"tokens": w.reshape(-1, w.shape[-1])[: len(f)]}
        for f, w in zip(frames, encode_windows(encode, frames, S, S, batch), strict=False)
    ]
    if lam_fn is not None:
        for out, f, w in zip(outs, frames, encode_windows(lam_fn, frames, L, L - 1, batch), strict=False):
            lat = np.zeros(len(f), np.int32)
            lat[1:] = w[:, : L - 1].reshape(-1)[: len(f) - 1]  # window k gives the actions into frames k(L-1)+1 ...
            out["latent_actions"] = lat
    return outs


def tokenize(args: TokenizeArgs) -> dict:
    check_output(args.out, args.overwrite, inputs=[args.data])  # before any work; checked again when staged
    meta = read_metadata(args.data)
    if "frames" not in record_arrays(meta):
        raise DataError(f"--data {args.data} holds no frames (already tokenized?)")
    tok_cfg, tok, tok_step = load_run(args.tokenizer, args.tokenizer_step)
    if tuple(tok_cfg.image_size) != tuple(meta["frame_shape"]):
        raise DataError(
            f"--tokenizer {args.tokenizer} was trained on {list(tok_cfg.image_size)} frames but --data "
            f"{args.data} holds {list(meta['frame_shape'])} frames"
        )
    S = tok_cfg.seq_len
    encode = _bind(tok, lambda m, x: m.encode(x.astype(jnp.float32) / 255.0))
    lam_fn, L = None, 0
    out_meta = {**{k: v for k, v in meta.items() if k not in ("splits", "arrays")}, "splits": {}}
    if args.lam is not None:
        lam_cfg, lam, lam_step = load_run(args.lam, args.lam_step)
        lam_fn, L = _bind(lam, lambda m, x: m.infer_actions(x.astype(jnp.float32) / 255.0)), lam_cfg.seq_len
        out_meta["lam"] = {**provenance(args.lam, lam_step, lam), "config": C.to_dict(lam_cfg.model), "window": L}
    grid = [d // tok_cfg.model.patch_size for d in tok_cfg.image_size[:2]]
    out_meta["arrays"] = {"tokens": {"dtype": "int32", "shape": [grid[0] * grid[1]]}}
    if meta["num_actions"] > 0:
        out_meta["arrays"]["actions"] = {"dtype": "int32", "shape": []}
    if lam_fn is not None:
        out_meta["arrays"]["latent_actions"] = {"dtype": "int32", "shape": []}
    out_meta["tokenizer"] = {
        **provenance(args.tokenizer, tok_step, tok),
        "config": C.to_dict(tok_cfg.model),
        "grid": grid,
        "vocab": tok_cfg.model.vocab_size,
        "window": S,
    }
    out_meta["source_dataset"] = str(args.data)
    t0, frames_done = time.perf_counter(), 0
    total = sum(info["records"] for info in meta["splits"].values())
    staging = Staging(args.out, overwrite=args.overwrite, inputs=[args.data])
    try:
        with tqdm(total=total, unit="rec", desc="tokenize", dynamic_ncols=True) as bar:
            for split, info in meta["splits"].items():
                sizes = [len(lengths) for _, lengths in split_shards(args.data, meta, split)]
                episode_of = EpisodeIndex(args.data, split).record_episode
                pending: list[list[tuple]] = []  # whole episodes: [(arrays, record meta), ...]

                def flush(writer, pending=pending, sizes=sizes, split=split):
                    nonlocal frames_done
                    frames = [np.concatenate([a["frames"] for a, _ in ep]) for ep in pending]
                    for ep, out in zip(
                        pending, _encode_episodes(frames, encode, S, lam_fn, L, args.batch_size), strict=False
                    ):
                        start = 0
                        for arrays, rec_meta in ep:
                            n = len(arrays["frames"])
                            rec = {k: v[start : start + n] for k, v in out.items()}
                            if "actions" in arrays:
                                rec["actions"] = arrays["actions"]
                            writer.records_per_shard = sizes[len(writer.shards)]  # keep the source's shard layout
                            writer.write(encode_record(rec, rec_meta), n)
                            start += n
                            frames_done += n
                            bar.update()
                    bar.set_postfix(split=split, fps=f"{frames_done / (time.perf_counter() - t0):.0f}")
                    pending.clear()

                with ShardWriter(staging.path / split, records_per_shard=sizes[0]) as writer:
                    for r, record in enumerate(iter_records(args.data, meta, split)):
                        if r == 0 or episode_of[r] != episode_of[r - 1]:
                            if sum(len(a["frames"]) for ep in pending for a, _ in ep) >= 4096:  # bounded memory
                                flush(writer)
                            pending.append([])
                        pending[-1].append(record)
                    flush(writer)
                out_meta["splits"][split] = {
                    **info,
                    "shards": [{"file": f"{split}/{f}", "lengths": ls} for f, ls in writer.shards],
                }
    except BaseException:
        staging.abort()
        raise
    write_json_atomic(staging.path / METADATA, out_meta)
    staging.commit()
    out_meta["seconds"] = time.perf_counter() - t0
    return out_meta
