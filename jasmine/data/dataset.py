"""Dataset directories: ``metadata.json`` plus one folder of ArrayRecord shards per split.

Layout::

    DIR/metadata.json                     written last; its absence means "incomplete"
    DIR/{train,val,test}/shard-00000.array_record

``metadata.json`` holds the format version, frame shape, number of actions (0 when the
data has none), per-split episode/frame/record counts, the generator's arguments and,
per shard, the length (in frames) of each record, so loaders can build their index
without reading any record.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jasmine.data.records import (FORMAT_VERSION, SHARD_SUFFIX, DataError, RecordFormatError, ShardWriter,
                                  decode_record, encode_record, write_json_atomic)

METADATA = "metadata.json"
SPLITS = ("train", "val", "test")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

__all__ = ["DataError", "RecordFormatError", "DatasetWriter", "read_metadata", "split_shards", "iter_records"]


@dataclass
class SplitInfo:
    episodes: int = 0
    frames: int = 0
    records: int = 0
    episode_lengths: list[int] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetWriter:
    """Writes episodes, chunked to ``chunk_len`` frames, into ``root/<split>/`` shards.

    ``metadata.json`` is removed on open and rewritten atomically by :meth:`finish`, so a
    dataset is only ever readable once every shard of every split is complete.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        frame_shape: tuple[int, int, int],
        num_actions: int,
        source: str,
        generator: dict[str, Any],
        chunk_len: int = 160,
        records_per_shard: int = 100,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        if (self.root / METADATA).exists() and not overwrite:
            raise DataError(f"{self.root} already holds a dataset ({METADATA} exists); pass --overwrite to replace it")
        (self.root / METADATA).unlink(missing_ok=True)
        for split in SPLITS:
            shutil.rmtree(self.root / split, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.frame_shape, self.num_actions, self.source = tuple(frame_shape), num_actions, source
        self.generator, self.chunk_len, self.records_per_shard = generator, chunk_len, records_per_shard
        self.splits: dict[str, SplitInfo] = {}
        self._writers: dict[str, ShardWriter] = {}

    def add_episode(self, split: str, frames: np.ndarray, actions: np.ndarray | None, meta: dict[str, Any]) -> None:
        """Append one episode (frames uint8 [T,H,W,C], actions int [T] or None)."""
        if tuple(frames.shape[1:]) != self.frame_shape or frames.dtype != np.uint8:
            raise DataError(f"episode frames {frames.dtype}{list(frames.shape)} != uint8[T, {self.frame_shape}]")
        if split not in self._writers:
            self._writers[split] = ShardWriter(self.root / split, self.records_per_shard)
            self.splits[split] = SplitInfo()
        info, writer = self.splits[split], self._writers[split]
        for k, start in enumerate(range(0, len(frames), self.chunk_len)):
            arrays = {"frames": frames[start : start + self.chunk_len]}
            if actions is not None:
                arrays["actions"] = np.asarray(actions[start : start + self.chunk_len], np.int32)
            writer.write(encode_record(arrays, {**meta, "chunk_index": k}), len(arrays["frames"]))
            info.records += 1
        info.episodes += 1
        info.frames += len(frames)
        info.episode_lengths.append(len(frames))

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.abort()

    def finish(self, **split_extra: dict[str, Any]) -> dict[str, Any]:
        """Close all shards and write ``metadata.json``; returns the metadata."""
        for split, writer in self._writers.items():
            writer.close()
            self.splits[split].shards = [{"file": f"{split}/{n}", "lengths": ls} for n, ls in writer.shards]
        meta = {
            "format": "jasmine-episodes",
            "format_version": FORMAT_VERSION,
            "frame_shape": list(self.frame_shape),
            "num_actions": self.num_actions,
            "source": self.source,
            "chunk_len": self.chunk_len,
            "generator": self.generator,
            "splits": {
                s: {
                    "episodes": i.episodes,
                    "frames": i.frames,
                    "records": i.records,
                    **split_extra.get(s, {}),
                    "episode_lengths": i.episode_lengths,
                    "shards": i.shards,
                }
                for s, i in self.splits.items()
            },
        }
        write_json_atomic(self.root / METADATA, meta)
        return meta


def read_metadata(root: str | Path) -> dict[str, Any]:
    """Load and check ``root/metadata.json``; raises :class:`DataError` naming the path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist")
    path = root / METADATA
    if not path.exists():
        shards = sorted(root.rglob(f"*{SHARD_SUFFIX}"))
        what = "is empty" if not any(root.iterdir()) else "has no metadata.json (incomplete or not a jasmine dataset)"
        hint = f"; it holds {len(shards)} shard(s) without metadata, e.g. from an interrupted generation" if shards else ""
        raise DataError(f"dataset directory {root} {what}{hint}")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path} is not valid JSON: {e!r:.200}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    if meta.get("format") != "jasmine-episodes":
        raise DataError(f"{path}: 'format' is {meta.get('format')!r}, expected 'jasmine-episodes'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {meta.get('format_version')!r}, this jasmine reads {FORMAT_VERSION}")
    for key in ("frame_shape", "num_actions", "splits"):
        if key not in meta:
            raise DataError(f"{path}: missing key {key!r}")
    shape, actions = meta["frame_shape"], meta["num_actions"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)):
        raise DataError(f"{path}: frame_shape {shape!r:.80} is not [H, W, C] of positive integers")
    if type(actions) is not int or actions < 0:
        raise DataError(f"{path}: num_actions {actions!r:.80} is not an integer >= 0")
    if not isinstance(meta["splits"], dict) or not all(isinstance(k, str) and _SPLIT_NAME.fullmatch(k)
                                                        for k in meta["splits"]):
        raise DataError(f"{path}: split names must be letters, digits, '_' or '-'")
    return meta


def action_meanings(meta: dict[str, Any]) -> list[str] | None:
    """Names of the dataset's actions: recorded by its generator (CoinRun datasets written before the names
    were recorded get procgen's, which never change)."""
    gen = meta.get("generator") or {}
    if gen.get("action_meanings"):
        return list(gen["action_meanings"])
    if gen.get("name") == "coinrun" and meta.get("num_actions") == 15:
        from jasmine.data.coinrun import ACTION_MEANINGS

        return list(ACTION_MEANINGS)
    return None


def _inside(root: Path, rel: Any, where: Path) -> Path:
    """``root / rel``, refusing absolute paths and paths that leave ``root`` (untrusted metadata)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise DataError(f"{where}: shard path {rel!r} must be a relative path inside the dataset")
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: shard path {rel!r} leaves the dataset directory {root}")
    return path


def split_shards(root: str | Path, meta: dict[str, Any], split: str) -> list[tuple[Path, list[int]]]:
    """The (path, record lengths) of each shard of ``split``, in sorted order, checked on disk."""
    root = Path(root)
    where = root / METADATA
    if split not in meta["splits"]:
        raise DataError(f"{where}: no split {split!r} (have {sorted(meta['splits'])})")
    try:
        entries = [(s["file"], s["lengths"]) for s in meta["splits"][split]["shards"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"{where}: split {split!r} has malformed 'shards' ({e!r})") from None
    shards = []
    for rel, lengths in entries:
        if not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths):
            raise DataError(f"{where}: shard {rel!r} has malformed record lengths")
        shards.append((_inside(root, rel, where), list(lengths)))
    shards.sort()
    if not shards:
        raise DataError(f"{root / split}: split {split!r} has no shards")
    for path, _ in shards:
        if not path.is_file():
            raise DataError(f"shard {path} listed in {where} is missing")
    return shards


def decode_at(buf: bytes, shard: Path | str, index: int):
    """Decode record ``index`` of ``shard``; a malformed one raises RecordFormatError naming both."""
    try:
        return decode_record(buf)
    except RecordFormatError as e:
        raise RecordFormatError(f"shard {shard}, record {index}: {e}") from None


def iter_records(root: str | Path, meta: dict, split: str, limit: int = 0):
    """Decoded ``(arrays, meta)`` of the records of ``split`` in shard order."""
    from array_record.python.array_record_module import ArrayRecordReader

    seen = 0
    for path, lengths in split_shards(root, meta, split):
        reader = ArrayRecordReader(str(path))
        for i in range(len(lengths)):
            if limit and seen >= limit:
                return
            yield decode_at(reader.read([i])[0], path, i)
            seen += 1
        reader.close()
