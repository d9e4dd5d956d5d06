"""Grain input pipeline over jasmine episode shards.

Dimension key: B batch (per process), T seq_len, H/W/C frame height/width/channels.

Pipeline: index of window slots → shard by JAX process → seeded global shuffle (reshuffled
each epoch) → random window of ``seq_len`` frames per slot → batch → optional multiprocess
workers. A record of L frames owns ``L // seq_len`` slots, so sampling is proportional to
length and an epoch sees about every frame once. Records shorter than ``seq_len`` are
dropped when the index is built. The iterator from ``iter(make_loader(...))`` has
``get_state()`` / ``set_state()`` for exact resumption.
"""

from __future__ import annotations

import bisect
import warnings
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jasmine.data.dataset import DataError, read_metadata, split_shards
from jasmine.data.records import RecordFormatError, decode_record


def record_arrays(meta: dict[str, Any]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Per-frame dtype and shape of each array a record holds, from metadata.json."""
    if "arrays" in meta:
        return {k: (np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in meta["arrays"].items()}
    arrays = {"frames": (np.dtype(np.uint8), tuple(meta["frame_shape"]))}
    if meta["num_actions"] > 0:
        arrays["actions"] = (np.dtype(np.int32), ())
    return arrays


def _check_shard(path: Path, expected_records: int) -> None:
    """Open a shard's footer (cheap) so an unreadable file fails now, by name."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(str(path))
        n = reader.num_records()
        reader.close()
    except Exception as e:  # array_record raises plain RuntimeError/ValueError on bad files
        raise DataError(f"shard {path} is unreadable or corrupt: {e}") from e
    if n != expected_records:
        raise DataError(f"shard {path} holds {n} records but metadata.json lists {expected_records}")


class EpisodeSource(grain.sources.RandomAccessDataSource):
    """Random access to window slots; item ``i`` is the decoded record owning slot ``i``."""

    def __init__(self, root: str | Path, split: str, seq_len: int, image_shape: tuple[int, int, int] | None = None):
        self.root, self.split, self.seq_len = Path(root), split, seq_len
        meta = read_metadata(root)
        self.frame_shape = tuple(meta["frame_shape"])
        if image_shape is not None and tuple(image_shape) != self.frame_shape:
            raise DataError(
                f"{self.root / 'metadata.json'}: frames are {list(self.frame_shape)} (H, W, C) but the config asks for "
                f"{list(image_shape)}; set the image size to match the data or regenerate it"
            )
        self.arrays = record_arrays(meta)
        shards = split_shards(root, meta, split)
        self.paths = [str(p) for p, _ in shards]
        for path, lengths in shards:
            _check_shard(path, len(lengths))
        lengths = [np.asarray(ls, np.int64) for _, ls in shards]
        self._first = np.cumsum([0] + [len(ls) for ls in lengths])  # global record id of each shard's first record
        all_lengths = np.concatenate(lengths)
        slots = all_lengths // seq_len
        short = int((slots == 0).sum())
        if short == len(all_lengths):
            raise DataError(
                f"{self.root / split}: no record has at least seq_len={seq_len} frames "
                f"(longest is {int(all_lengths.max(initial=0))}); lower seq_len or regenerate with longer episodes"
            )
        if short:
            warnings.warn(f"{self.root / split}: skipping {short} of {len(all_lengths)} records shorter than seq_len={seq_len}")
        self._record_of_slot = np.repeat(np.arange(len(all_lengths)), slots)
        self._lengths = all_lengths
        self._reader = None

    def __len__(self) -> int:
        return len(self._record_of_slot)

    def _locate(self, record: int) -> tuple[str, int]:
        shard = bisect.bisect_right(self._first, record) - 1
        return self.paths[shard], record - int(self._first[shard])

    def _read(self, record: int) -> bytes:
        if self._reader is None:
            self._reader = grain.sources.ArrayRecordDataSource(self.paths)
        try:
            return self._reader[record]
        except Exception as e:
            path, idx = self._locate(record)
            raise DataError(f"shard {path} is unreadable or corrupt (record {idx}): {e}") from e

    def __getitem__(self, slot: int) -> dict[str, np.ndarray]:
        record = int(self._record_of_slot[slot])
        try:
            arrays, _ = decode_record(self._read(record))
        except RecordFormatError as e:
            path, idx = self._locate(record)
            raise DataError(f"shard {path}, record {idx}: {e}") from e
        n = int(self._lengths[record])
        out = {}
        for name, (dtype, shape) in self.arrays.items():
            arr = arrays.get(name)
            want = (n, *shape)
            if arr is None or arr.dtype != dtype or arr.shape != want:
                path, idx = self._locate(record)
                got = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
                raise DataError(f"shard {path}, record {idx}: {name} are {got}, expected {np.dtype(dtype).name}{list(want)}")
            out[name] = arr
        return out

    def __getstate__(self):
        return {**self.__dict__, "_reader": None}

    def __repr__(self) -> str:
        return f"EpisodeSource({self.root}/{self.split}, seq_len={self.seq_len}, slots={len(self)})"


class RandomWindow(grain.transforms.RandomMap):
    """Crop a uniformly random ``seq_len`` window (frames and aligned actions)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def random_map(self, episode: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        start = int(rng.integers(0, len(next(iter(episode.values()))) - self.seq_len + 1))
        return {k: np.array(v[start : start + self.seq_len]) for k, v in episode.items()}


def make_loader(
    root: str | Path,
    split: str,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    image_shape: tuple[int, int, int] | None = None,
    num_epochs: int | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Batches ``{"frames": uint8[B,T,H,W,C], "actions": int32[B,T]}`` for this process.

    Token datasets (``jasmine data tokenize``) give ``tokens`` int32[B,T,N] instead of
    frames, plus ``latent_actions`` int32[B,T] when a LAM was given.

    ``batch_size`` is the global batch; each of ``process_count`` JAX processes gets
    ``batch_size // process_count`` rows from its own disjoint slice of the index.
    ``num_epochs=None`` repeats forever.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if batch_size % process_count:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {process_count} JAX processes")
    source = EpisodeSource(root, split, seq_len, image_shape)
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) < batch_size // process_count:
        raise DataError(f"{Path(root) / split}: only {len(ds)} windows per process, fewer than one batch of {batch_size // process_count}")
    ds = ds.shuffle(seed=seed).repeat(num_epochs).random_map(RandomWindow(seq_len), seed=seed + 1)
    it = ds.to_iter_dataset().batch(batch_size // process_count, drop_remainder=True)
    if num_workers > 0:
        from absl import flags  # grain's worker processes read absl flags; parse them if no app did

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it
