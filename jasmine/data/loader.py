"""Grain input pipeline over jasmine episode shards, and held-out clips for evaluation.

Dimension key: B batch (per process), T seq_len, H/W/C frame height/width/channels.

The index is built from metadata.json alone: each record's length, and which episode it
belongs to and at which frame of that episode it starts. Windows are cut from *segments*:
in the chunked layout (format 2) a segment is one record, in the grouped layout (format 3,
records of a few frames) it is a whole episode, read back from only the records a window
overlaps. A segment owns window *slots*:
disjoint windows ``stride`` frames apart (``stride`` is ``seq_len`` rounded up to a
multiple of ``align``), all shifted by one random offset per segment and epoch. So an epoch
sees about every frame once, and two slots never share a frame. With ``align`` > 1 every
window starts at an episode frame that is a multiple of ``align`` (the encoding rule of
frozen frame encoders, see ``jasmine.models.genie``).

Pipeline: slots → seeded global shuffle (reshuffled each epoch) → crop each slot's window
→ this process's block of every global batch → batch → optional worker processes. Process
p of P gets rows [p B, (p+1) B) of each global batch of P B rows, so P processes together
load exactly the batches one process would. Global batch s is a pure function of (seed, s),
so ``start_batch=s`` resumes exactly on any number of processes (the training loop's way);
``iter(make_loader(...))`` also has Grain's ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import bisect
import warnings
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jasmine.data.dataset import GROUPED_VERSION, DataError, RecordFormatError, decode_at, read_metadata, split_shards


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


class EpisodeIndex:
    """Segments of one split (in shard order) with their episode and starting frame in it.

    ``lengths``, ``episode`` and ``offset`` are per segment; ``read(i, start, length)`` gives
    frames [start, start + length) of segment ``i``, decoding only the records they lie in.
    """

    def __init__(self, root: str | Path, split: str, image_shape: tuple[int, int, int] | None = None):
        self.root, self.split = Path(root), split
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
        self._first = np.cumsum([0] + [len(ls) for _, ls in shards])  # global record id of each shard's first
        self.record_lengths = np.concatenate([np.asarray(ls, np.int64) for _, ls in shards])
        episode_lengths = meta["splits"][split].get("episode_lengths")
        episode, offset = self._episodes(episode_lengths)
        self.grouped = meta["format_version"] == GROUPED_VERSION
        if self.grouped:
            if not episode_lengths:
                raise DataError(
                    f"{self.root / 'metadata.json'}: split {split!r} of a format-3 dataset needs episode_lengths"
                )
            firsts = np.flatnonzero(offset == 0)
        else:
            firsts = np.arange(len(self.record_lengths))
        self._seg_first = np.append(firsts, len(self.record_lengths))  # records of segment i: [first[i], first[i+1])
        self.lengths = np.add.reduceat(self.record_lengths, firsts) if len(firsts) else np.zeros(0, np.int64)
        self.episode, self.offset, self.record_episode = episode[firsts], offset[firsts], episode
        self._rec_start = offset - np.repeat(self.offset, np.diff(self._seg_first))  # record's frame in its segment
        self._reader = None

    def _episodes(self, episode_lengths) -> tuple[np.ndarray, np.ndarray]:
        """Episode id and start frame within it of each record (records are written episode by episode)."""
        n_rec = len(self.record_lengths)
        if not episode_lengths:  # unknown: every record is its own episode
            return np.arange(n_rec), np.zeros(n_rec, np.int64)
        episode, offset = np.zeros(n_rec, np.int64), np.zeros(n_rec, np.int64)
        e, done = 0, 0
        for r, n in enumerate(self.record_lengths):
            if e >= len(episode_lengths):
                raise DataError(
                    f"{self.root / 'metadata.json'}: split {self.split!r} has more record frames than "
                    f"its episode_lengths add up to"
                )
            episode[r], offset[r] = e, done
            done += int(n)
            if done > episode_lengths[e]:
                raise DataError(
                    f"{self.root / 'metadata.json'}: records of split {self.split!r} do not add up to "
                    f"episode {e}'s length {episode_lengths[e]}"
                )
            if done == episode_lengths[e]:
                e, done = e + 1, 0
        return episode, offset

    def locate(self, record: int) -> tuple[str, int]:
        shard = bisect.bisect_right(self._first, record) - 1
        return self.paths[shard], record - int(self._first[shard])

    def read(self, segment: int, start: int = 0, length: int | None = None) -> dict[str, np.ndarray]:
        """Checked arrays of frames [start, start + length) (default: all) of a segment, decoded from only the
        records they lie in; a malformed record raises RecordFormatError naming shard and record."""
        if self._reader is None:
            self._reader = grain.sources.ArrayRecordDataSource(self.paths)
        lo, hi = int(self._seg_first[segment]), int(self._seg_first[segment + 1])
        stop = int(self.lengths[segment]) if length is None else start + length
        if hi - lo > 1:  # grouped layout: only the records overlapping the window
            starts = self._rec_start[lo:hi]
            lo, hi = (
                lo + int(np.searchsorted(starts, start, "right")) - 1,
                lo + int(np.searchsorted(starts, stop, "left")),
            )
        parts = []
        for r in range(lo, hi):  # each record's frames inside [start, stop)
            base, n = int(self._rec_start[r]), int(self.record_lengths[r])
            a, b = max(start, base) - base, min(stop, base + n) - base
            parts.append({k: v[a:b] for k, v in self._read_record(r).items()})
        if len(parts) == 1:  # a view into the record's buffer: copied so the window owns its memory
            return {k: np.array(v) for k, v in parts[0].items()}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _read_record(self, record: int) -> dict[str, np.ndarray]:
        path, idx = self.locate(record)
        try:
            buf = self._reader[record]
        except Exception as e:
            raise DataError(f"shard {path} is unreadable or corrupt (record {idx}): {e}") from e
        arrays, _ = decode_at(buf, path, idx)
        n = int(self.record_lengths[record])
        out = {}
        for name, (dtype, shape) in self.arrays.items():
            arr = arrays.get(name)
            want = (n, *shape)
            if arr is None or arr.dtype != dtype or arr.shape != want:
                got = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
                raise RecordFormatError(
                    f"shard {path}, record {idx}: {name} are {got}, expected {np.dtype(dtype).name}{list(want)}"
                )
            out[name] = arr
        return out

    def first_aligned(self, align: int) -> np.ndarray:
        """Per segment, the first frame whose episode frame index is a multiple of ``align``."""
        return (-self.offset) % align

    def __getstate__(self):
        return {**self.__dict__, "_reader": None}


class WindowSlots(grain.sources.RandomAccessDataSource):
    """Item ``i`` is the segment owning slot ``i``, with the slot's number within the segment."""

    def __init__(self, index: EpisodeIndex, seq_len: int, align: int = 1):
        if align < 1:
            raise ValueError(f"align must be >= 1, got {align}")
        self.index, self.seq_len, self.align = index, seq_len, align
        self.stride = align * -(-seq_len // align)
        usable = index.lengths - index.first_aligned(align)
        slots = np.where(usable >= seq_len, (usable - seq_len) // self.stride + 1, 0)
        if not slots.any():
            raise DataError(
                f"{index.root / index.split}: no record has a window of seq_len={seq_len} frames starting at a "
                f"multiple of {align} (longest: {int(index.lengths.max(initial=0))} frames); lower seq_len "
                f"or regenerate with longer episodes"
            )
        short = int((slots == 0).sum())
        if short:
            warnings.warn(
                f"{index.root / index.split}: skipping {short} of {len(slots)} "
                f"{'episodes' if index.grouped else 'records'} shorter than "
                f"seq_len={seq_len}",
                stacklevel=2,
            )
        self.slots_of = slots
        self.segment_of_slot = np.repeat(np.arange(len(slots)), slots)
        self.slot_in_segment = np.arange(len(self.segment_of_slot)) - np.repeat(np.cumsum(slots) - slots, slots)

    def __len__(self) -> int:
        return len(self.segment_of_slot)

    def __getitem__(self, slot: int) -> dict[str, Any]:
        return {"segment": int(self.segment_of_slot[slot]), "slot": int(self.slot_in_segment[slot])}

    def window_start(self, segment: int, slot: int, rng: np.random.Generator) -> int:
        """Start frame of ``slot``: the segment's random aligned offset (``rng``) plus ``slot`` strides."""
        first = int(self.index.first_aligned(self.align)[segment])
        free = int(self.index.lengths[segment]) - first - self.seq_len - (int(self.slots_of[segment]) - 1) * self.stride
        return first + self.align * int(rng.integers(0, free // self.align + 1)) + slot * self.stride

    def __repr__(self) -> str:
        where = f"{self.index.root}/{self.index.split}"
        return f"WindowSlots({where}, seq_len={self.seq_len}, align={self.align}, slots={len(self)})"


class CropWindow(grain.transforms.MapWithIndex):
    """Read a slot's window; the segment's offset is drawn from (seed, epoch, segment), shared by its slots."""

    def __init__(self, slots: WindowSlots, seed: int):
        self.slots, self.seed, self.n = slots, seed, len(slots)

    def map_with_index(self, index: int, item: dict[str, Any]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index // self.n, item["segment"]])
        start = self.slots.window_start(item["segment"], item["slot"], rng)
        return self.slots.index.read(item["segment"], start, self.slots.seq_len)


class ProcessBlock(grain.MapDataset):
    """Rows [p b, (p+1) b) of every global batch of ``processes * b`` consecutive elements."""

    def __init__(self, parent: grain.MapDataset, process: int, processes: int, per_process: int):
        super().__init__(parent)
        self.p, self.P, self.b = process, processes, per_process
        self._len = (len(parent) // (processes * per_process)) * per_process

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self.b)
        return self._parent[batch * self.P * self.b + self.p * self.b + row]

    def __str__(self) -> str:
        return f"ProcessBlock(process={self.p}/{self.P}, rows={self.b})"


def make_loader(
    root: str | Path,
    split: str,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    image_shape: tuple[int, int, int] | None = None,
    align: int = 1,
    num_epochs: int | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
    read_threads: int = 0,
) -> grain.IterDataset:
    """Batches ``{"frames": uint8[B,T,H,W,C], "actions": int32[B,T]}`` for this process.

    Token datasets (``jasmine data tokenize``) give ``tokens`` int32[B,T,N] instead of
    frames, plus ``latent_actions`` int32[B,T] when a LAM was given.

    ``batch_size`` is the global batch; each of ``process_count`` JAX processes gets its
    block of ``batch_size // process_count`` rows. ``num_epochs=None`` repeats forever.
    ``start_batch`` skips that many global batches (for any process count, the same batches).
    ``read_threads`` > 0 reads windows ahead in that many threads (Grain's default is 16: on 2 cores the
    GIL makes that 3x slower than reading on demand; the batches are the same either way).
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if batch_size % process_count:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {process_count} JAX processes")
    slots = WindowSlots(EpisodeIndex(root, split, image_shape), seq_len, align)
    if len(slots) < batch_size:
        raise DataError(
            f"{Path(root) / split}: only {len(slots)} windows of {seq_len} frames, fewer than one batch of {batch_size}"
        )
    ds = grain.MapDataset.source(slots).shuffle(seed=seed).repeat(num_epochs).map_with_index(CropWindow(slots, seed))
    per_process = batch_size // process_count
    rows = ProcessBlock(ds, process_index, process_count, per_process)[start_batch * per_process :]
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=64 * read_threads)
    it = rows.to_iter_dataset(read_options=read).batch(per_process, drop_remainder=True)
    if num_workers > 0:
        from absl import flags  # grain's worker processes read absl flags; parse them if no app did

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def episode_clips(
    root: str | Path,
    split: str,
    n: int,
    length: int,
    seed: int,
    *,
    align: int = 1,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, np.ndarray]:
    """``n`` clips of ``length`` frames from ``n`` distinct episodes, deterministic in ``seed``.

    Episodes are drawn uniformly among those with an aligned window inside one record, and
    each clip uniformly among its episode's such windows. Returns the arrays [n, length, ...]
    plus ``episode`` and ``start`` (the clip's first frame within its episode).
    """
    index = EpisodeIndex(root, split, image_shape)
    first = index.first_aligned(align)
    counts = np.maximum((index.lengths - first - length) // align + 1, 0)  # aligned windows per record
    episodes = np.unique(index.episode[counts > 0])
    if len(episodes) < n:
        raise DataError(
            f"{Path(root) / split}: only {len(episodes)} episodes hold a clip of {length} frames, fewer "
            f"than the {n} clips asked for (clips come from distinct episodes); ask for fewer clips or "
            f"generate more episodes"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(episodes, n, replace=False))
    clips: dict[str, list] = {"episode": [], "start": []}
    for e in chosen:
        windows = [
            (int(r), int(first[r]) + align * m) for r in np.flatnonzero(index.episode == e) for m in range(counts[r])
        ]
        r, s = windows[int(rng.integers(0, len(windows)))]
        for name, arr in index.read(r, s, length).items():
            clips.setdefault(name, []).append(np.array(arr))
        clips["episode"].append(int(e))
        clips["start"].append(int(index.offset[r]) + s)
    return {k: np.stack(v) if k not in ("episode", "start") else np.asarray(v) for k, v in clips.items()}


def episode_windows(
    root: str | Path,
    split: str,
    length: int,
    transitions: int,
    seed: int,
    *,
    align: int = 1,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Consecutive windows of ``length`` frames that share their end frames (no transition twice), from whole
    episodes taken in a seeded order until ``transitions`` transitions are reached (or the split runs out).
    Windows stay inside a segment (a record, or a grouped episode) and start at multiples of ``align`` in their
    episode, so a segment's last frames that fill no window are left out. Returns the arrays [n, length, ...]
    plus ``episode`` (per window)."""
    if length < 2 or (length - 1) % align:
        raise ValueError(f"windows of {length} frames: need >= 2 frames and length - 1 a multiple of {align}")
    index = EpisodeIndex(root, split, image_shape)
    first, stride = index.first_aligned(align), length - 1
    counts = np.maximum((index.lengths - first - length) // stride + 1, 0)
    out: dict[str, list] = {"episode": []}
    total = 0
    for e in np.random.default_rng(seed).permutation(np.unique(index.episode[counts > 0])):
        for r in np.flatnonzero((index.episode == e) & (counts > 0)):
            seg = index.read(int(r))
            for m in range(int(counts[r])):
                s = int(first[r]) + m * stride
                for name, arr in seg.items():
                    out.setdefault(name, []).append(arr[s : s + length])
                out["episode"].append(int(e))
            total += int(counts[r]) * stride
        if total >= transitions:
            break
    if not out["episode"]:
        raise DataError(f"{Path(root) / split}: no episode holds a window of {length} frames")
    return {k: np.stack(v) if k != "episode" else np.asarray(v) for k, v in out.items()}
