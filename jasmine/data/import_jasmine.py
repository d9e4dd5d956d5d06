"""``jasmine data import-jasmine``: datasets in the reference codebase's format, read safely.

The reference stores each record as ``pickle.dumps({"raw_video": bytes of uint8
[T, H, W, C], "sequence_length": T, "actions": int array [T]})`` in ArrayRecord shards
(``DIR/{train,val,test}/*.array_record``, or a flat folder of shards). Unpickling runs
whatever code a record names, so records are read by :mod:`jasmine.data.safe_pickle`, which
interprets the opcodes itself, builds only plain containers, numbers, strings, bytes and
plain numeric arrays (from checked bytes, never through NumPy's unpickling), and refuses
anything else before building from it. Records are read in a
spawned child process with a memory cap and a time limit (``Reader``). Each record becomes one episode (the format
does not say which records came from one episode). Split folders are kept; a flat folder is dealt to splits by shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from tqdm import tqdm

from jasmine.data import safe_pickle
from jasmine.data.convert import assign_splits
from jasmine.data.dataset import SPLITS, DataError, DatasetWriter, RecordFormatError
from jasmine.data.output import check_output


@dataclass(frozen=True)
class ImportArgs:
    """Convert a dataset in the reference codebase's format (pickled records in ArrayRecord) safely."""

    inputs: Annotated[Path, tyro.conf.arg(name="in")]
    """Folder of the reference's dataset (train/, val/, test/ of *.array_record, or the shards themselves)."""
    out: Path
    """Output dataset directory."""
    frame_shape: tuple[int, int, int] = (64, 64, 3)
    """H W C of the stored frames (the reference's records do not say)."""
    num_actions: int = 0
    """Number of discrete actions (0 = the largest action id seen + 1; vector actions are dropped)."""
    val_fraction: float = 0.1
    """For a flat folder of shards: share of shards for val."""
    test_fraction: float = 0.1
    seed: int = 0
    chunk_len: int = 160
    records_per_shard: int = 100
    overwrite: bool = False
    max_memory_mb: int = 2048
    """Records are read in a child process that may use at most this much memory beyond its own start-up (the
    record's bytes included); a record that needs more is refused by name, and cannot take the machine down."""
    record_timeout_s: float = 120.0
    """A record that takes longer than this to read is refused by name."""


def _shards(root: Path, val: float, test: float, seed: int) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"--in {root} is not a folder of ArrayRecord shards")
    if any((root / s).is_dir() for s in SPLITS):
        split = {s: sorted((root / s).glob("*.array_record")) for s in SPLITS if (root / s).is_dir()}
    else:
        files = sorted(root.glob("*.array_record"))
        split = assign_splits(files, val, test, seed) if files else {}
    if not any(split.values()):
        raise DataError(f"no *.array_record shards in --in {root} (or its train/val/test folders)")
    return split


def read_record(buf: bytes, where: str, frame_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames uint8 [T, H, W, C] and actions (or None) of one reference record, checked."""
    try:
        rec = safe_pickle.loads(buf)
    except safe_pickle.UnsafePickle as e:  # refused, truncated or garbage: nothing was built from it
        raise RecordFormatError(f"{where}: {e}") from None
    if not isinstance(rec, dict) or "raw_video" not in rec or "sequence_length" not in rec:
        raise RecordFormatError(
            f"{where}: expected a dict with raw_video and sequence_length, got "
            f"{type(rec).__name__}{sorted(rec) if isinstance(rec, dict) else ''}"
        )
    t, raw = rec["sequence_length"], rec["raw_video"]
    if isinstance(raw, np.ndarray):
        raw = raw.astype(np.uint8, copy=False).tobytes()
    if not isinstance(t, (int, np.integer)) or not isinstance(raw, (bytes, bytearray)):
        raise RecordFormatError(f"{where}: sequence_length must be an int and raw_video bytes")
    want = int(t) * int(np.prod(frame_shape))
    if t < 1 or len(raw) != want:
        raise RecordFormatError(
            f"{where}: raw_video holds {len(raw)} bytes, not sequence_length {t} x "
            f"{'x'.join(map(str, frame_shape))} = {want} (set --frame-shape)"
        )
    frames = np.frombuffer(raw, np.uint8).reshape(int(t), *frame_shape)
    actions = rec.get("actions")
    if isinstance(actions, (list, tuple)):  # a flat list of ids (nested lists could share memo entries: refused)
        if len(actions) != t or not all(type(a) is int and -(2**31) <= a < 2**31 for a in actions):
            raise RecordFormatError(f"{where}: actions as a list must be {t} integer ids")
        actions = np.asarray(actions, np.int64)
    elif actions is not None and not isinstance(actions, np.ndarray):
        raise RecordFormatError(f"{where}: actions must be an array or a list of ids, got {type(actions).__name__}")
    if actions is not None:
        if actions.shape[:1] != (t,) or not np.issubdtype(actions.dtype, np.integer):
            raise RecordFormatError(
                f"{where}: actions are {actions.dtype}{list(actions.shape)}, expected int[{t}, ...]"
            )
    return frames, actions


def _limit_memory(extra_mb: int) -> None:
    """In the reader process: cap its address space at its current size plus ``extra_mb``."""
    import resource

    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    limit = size + extra_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _read_in_child(buf: bytes, where: str, frame_shape: tuple[int, int, int]):
    try:
        return read_record(buf, where, frame_shape)
    except MemoryError:
        raise RecordFormatError(f"{where}: reading it needs more memory than --max-memory-mb allows") from None


class Reader:
    """:func:`read_record` in one spawned child process with a memory cap and a per-record time limit: whatever a
    record does to the reader (exhaust memory, crash, stall) is a :class:`RecordFormatError` naming it."""

    def __init__(self, max_memory_mb: int, timeout_s: float):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        if max_memory_mb < 1 or timeout_s <= 0:
            raise DataError("--max-memory-mb must be >= 1 and --record-timeout-s > 0")
        self.timeout_s, self.max_memory_mb = timeout_s, max_memory_mb
        self.pool = ProcessPoolExecutor(1, get_context("spawn"), initializer=_limit_memory, initargs=(max_memory_mb,))

    def read(self, buf: bytes, where: str, frame_shape: tuple[int, int, int]):
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(_read_in_child, buf, where, frame_shape).result(timeout=self.timeout_s)
        except BrokenProcessPool:
            raise RecordFormatError(
                f"{where}: the reader process died on it (over --max-memory-mb {self.max_memory_mb}?)"
            ) from None
        except FutureTimeout:
            raise RecordFormatError(f"{where}: reading it took over --record-timeout-s {self.timeout_s:g}") from None

    def close(self) -> None:
        for proc in list(getattr(self.pool, "_processes", {}).values()):  # a stalled reader is not waited for
            proc.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _records(path: Path):
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(str(path))
        n = reader.num_records()
    except Exception as e:
        raise DataError(f"shard {path} is unreadable or corrupt: {e}") from e
    try:
        for i in range(n):
            yield i, reader.read([i])[0]
    finally:
        reader.close()


def import_jasmine(args: ImportArgs) -> dict:
    """Stream every record through the safe reader into a new dataset; on any bad record nothing is kept."""
    root = Path(args.inputs)
    check_output(args.out, args.overwrite, inputs=[root])  # before reading anything
    splits = _shards(root, args.val_fraction, args.test_fraction, args.seed)
    reader = Reader(args.max_memory_mb, args.record_timeout_s)  # its process starts with the first record
    writer = DatasetWriter(
        args.out,
        frame_shape=args.frame_shape,
        num_actions=args.num_actions,
        source="jasmine-reference",
        generator={"name": "import-jasmine", "in": str(root), "seed": args.seed},
        chunk_len=args.chunk_len,
        records_per_shard=args.records_per_shard,
        overwrite=args.overwrite,
        inputs=[root],
    )
    kind, top = None, -1  # the actions of the first record decide: scalar ids kept, vectors or none dropped
    try:
        with tqdm(
            total=sum(len(f) for f in splits.values()), unit="shard", desc="import-jasmine", dynamic_ncols=True
        ) as bar:
            for split, files in splits.items():
                for path in files:
                    for i, buf in _records(path):
                        where = f"shard {path}, record {i}"
                        frames, actions = reader.read(buf, where, args.frame_shape)
                        this = "none" if actions is None else "scalar" if actions.ndim == 1 else "vector"
                        if kind is not None and this != kind:
                            raise RecordFormatError(f"{where}: {this} actions, but earlier records have {kind}")
                        kind = this
                        if kind == "scalar":
                            if actions.min() < 0 or (args.num_actions and actions.max() >= args.num_actions):
                                raise RecordFormatError(
                                    f"{where}: action ids outside [0, --num-actions {args.num_actions or '?'})"
                                )
                            top = max(top, int(actions.max()))
                        writer.add_episode(
                            split,
                            frames,
                            actions.astype(np.int32) if kind == "scalar" else None,
                            {"source": str(path), "record": i},
                        )
                    bar.update()
    except BaseException:
        writer.abort()
        raise
    finally:
        reader.close()
    writer.num_actions = (args.num_actions or top + 1) if kind == "scalar" else 0
    writer.generator["actions"] = {"scalar": "kept", "vector": "vector actions dropped"}.get(kind, "none")
    return writer.finish(**{s: {"sources": [str(p) for p in files]} for s, files in splits.items() if files})
