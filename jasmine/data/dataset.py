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

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jasmine.data.actions import COINRUN_ACTION_MEANINGS, effective_table
from jasmine.data.metadata import GROUPED_VERSION, METADATA, READABLE_VERSIONS, read_metadata
from jasmine.data.output import Staging
from jasmine.data.records import (
    FORMAT_VERSION,
    DataError,
    RecordFormatError,
    ShardWriter,
    decode_record,
    encode_record,
    write_json_atomic,
)

SHARD_OPTIONS = {FORMAT_VERSION: "group_size:1", GROUPED_VERSION: "group_size:1,uncompressed"}
DEFAULT_CHUNK = {FORMAT_VERSION: 160, GROUPED_VERSION: 8}
SPLITS = ("train", "val", "test")

__all__ = [
    "GROUPED_VERSION",
    "DataError",
    "RecordFormatError",
    "DatasetWriter",
    "read_metadata",
    "split_shards",
    "iter_records",
]


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

    Everything is written into a hidden sibling of ``root`` and swapped in by :meth:`finish` (with
    ``metadata.json`` last), so a dataset is only ever readable once every shard of every split is complete, and an
    old dataset stays readable until then. What ``root`` may hold, and which ``inputs`` it must stay clear of:
    ``jasmine.data.output``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        frame_shape: tuple[int, int, int],
        num_actions: int,
        source: str,
        generator: dict[str, Any],
        chunk_len: int | None = None,
        records_per_shard: int | None = None,
        overwrite: bool = False,
        format_version: int = FORMAT_VERSION,
        inputs: Iterable[str | Path] = (),
    ):
        self.root = Path(root)
        if format_version not in READABLE_VERSIONS:
            raise DataError(f"--format-version {format_version}: this jasmine writes {list(READABLE_VERSIONS)}")
        self.staging = Staging(self.root, overwrite=overwrite, inputs=inputs)
        self.format_version = format_version
        self.frame_shape, self.num_actions, self.source = tuple(frame_shape), num_actions, source
        self.generator = generator
        self.chunk_len = chunk_len or DEFAULT_CHUNK[format_version]
        self.records_per_shard = records_per_shard or 100 * 160 // self.chunk_len  # shards of ~16k frames
        self.splits: dict[str, SplitInfo] = {}
        self._writers: dict[str, ShardWriter] = {}

    def add_episode(self, split: str, frames: np.ndarray, actions: np.ndarray | None, meta: dict[str, Any]) -> None:
        """Append one episode (frames uint8 [T,H,W,C], actions int [T] or None)."""
        if tuple(frames.shape[1:]) != self.frame_shape or frames.dtype != np.uint8:
            raise DataError(f"episode frames {frames.dtype}{list(frames.shape)} != uint8[T, {self.frame_shape}]")
        arrays = {"frames": frames} | ({} if actions is None else {"actions": np.asarray(actions, np.int32)})
        self.add_arrays(split, arrays, meta)

    def add_arrays(self, split: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Append one episode given as named arrays with a leading time axis (frames, or tokens, ...)."""
        if split not in self._writers:
            self._writers[split] = ShardWriter(
                self.staging.path / split, self.records_per_shard, SHARD_OPTIONS[self.format_version]
            )
            self.splits[split] = SplitInfo()
        info, writer = self.splits[split], self._writers[split]
        n = len(next(iter(arrays.values())))
        for k, start in enumerate(range(0, n, self.chunk_len)):
            rec = {name: a[start : start + self.chunk_len] for name, a in arrays.items()}
            writer.write(encode_record(rec, {**meta, "chunk_index": k}), min(self.chunk_len, n - start))
            info.records += 1
        info.episodes += 1
        info.frames += n
        info.episode_lengths.append(n)

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.abort()
        self.staging.abort()

    def finish(self, **split_extra: dict[str, Any]) -> dict[str, Any]:
        """Close all shards and write ``metadata.json``; returns the metadata."""
        for split, writer in self._writers.items():
            writer.close()
            self.splits[split].shards = [{"file": f"{split}/{n}", "lengths": ls} for n, ls in writer.shards]
        meta = {
            "format": "jasmine-episodes",
            "format_version": self.format_version,
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
        write_json_atomic(self.staging.path / METADATA, meta)
        self.staging.commit()
        return meta


def action_meanings(meta: dict[str, Any]) -> list[str] | None:
    """Names of the dataset's actions: recorded by its generator (CoinRun datasets written before the names
    were recorded get procgen's, which never change)."""
    gen = meta.get("generator") or {}
    if gen.get("action_meanings"):
        return list(gen["action_meanings"])
    if gen.get("name") == "coinrun" and meta.get("num_actions") == 15:
        return list(COINRUN_ACTION_MEANINGS)
    return None


def effective_actions(meta: dict[str, Any], where: str | Path = METADATA) -> tuple[list[str], np.ndarray] | None:
    """(class names, class of each action id) of a dataset with actions, from its generator's record, checked.

    Older CoinRun datasets get procgen's classes; other datasets without a record treat each action as its own
    class. None when the dataset has no actions.
    """
    n = meta.get("num_actions", 0)
    if not n:
        return None
    gen = meta.get("generator") or {}
    table = gen.get("effective_actions")
    if table is None:
        meanings = action_meanings(meta) or [str(a) for a in range(n)]
        table = effective_table(gen.get("name", "") if len(meanings) == n else "", meanings)
    names, of_action = (table.get("names"), table.get("of_action")) if isinstance(table, dict) else (None, None)
    if not (isinstance(names, list) and 0 < len(names) <= n and all(isinstance(x, str) for x in names)):
        raise DataError(f"{where}: generator.effective_actions.names must be 1..{n} strings")
    if not (
        isinstance(of_action, list)
        and len(of_action) == n
        and all(type(c) is int and 0 <= c < len(names) for c in of_action)
    ):
        raise DataError(
            f"{where}: generator.effective_actions.of_action must give each of the {n} actions a class "
            f"in 0..{len(names) - 1}"
        )
    return [x[:40] for x in names], np.asarray(of_action, np.int64)


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


def bytes_per_frame(root: str | Path, splits: tuple[str, ...] | None = None) -> float:
    """Shard bytes on disk per frame, over ``splits`` (default: all)."""
    meta = read_metadata(root)
    chosen = [s for s in meta["splits"] if splits is None or s in splits]
    size = sum(p.stat().st_size for s in chosen for p, _ in split_shards(root, meta, s))
    return size / max(sum(meta["splits"][s]["frames"] for s in chosen), 1)


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


def relayout(
    src: str | Path,
    dst: str | Path,
    format_version: int,
    chunk_len: int | None = None,
    overwrite: bool = False,
    splits: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Copy dataset ``src`` to ``dst`` in another layout (format 2: chunked, 3: grouped), episode by episode.

    Records are re-cut to ``chunk_len`` frames (default: the layout's); arrays, episodes, splits
    (or only ``splits``), record metadata and shard order are kept, so both copies hold the same frames.
    """
    from tqdm import tqdm

    meta = read_metadata(src)
    chosen = {s: i for s, i in meta["splits"].items() if splits is None or s in splits}
    for split in set(splits or ()) - set(chosen):
        raise DataError(f"{Path(src) / METADATA}: no split {split!r} (have {sorted(meta['splits'])})")
    writer = DatasetWriter(
        dst,
        frame_shape=tuple(meta["frame_shape"]),
        num_actions=meta["num_actions"],
        source=meta.get("source", "relayout"),
        generator=meta.get("generator", {}),
        chunk_len=chunk_len,
        overwrite=overwrite,
        format_version=format_version,
        inputs=[src],
    )
    extra = {
        k: v
        for k, v in meta.items()
        if k
        not in ("format", "format_version", "frame_shape", "num_actions", "source", "chunk_len", "generator", "splits")
    }
    total = sum(info["records"] for info in chosen.values())
    try:
        with tqdm(total=total, unit="rec", desc=f"relayout to format {format_version}", dynamic_ncols=True) as bar:
            for split, info in chosen.items():
                lengths = list(info.get("episode_lengths") or [])  # unknown: every record is its own episode
                episode: list[tuple[dict, dict]] = []
                for arrays, rec_meta in iter_records(src, meta, split):
                    episode.append((arrays, rec_meta))
                    bar.update()
                    done = sum(len(next(iter(a.values()))) for a, _ in episode)
                    if not lengths or done >= lengths[0]:
                        if lengths and done != lengths.pop(0):
                            raise DataError(
                                f"{Path(src) / METADATA}: split {split!r}'s records do not add up to its "
                                "episode_lengths"
                            )
                        writer.add_arrays(
                            split,
                            {k: np.concatenate([a[k] for a, _ in episode]) for k in episode[0][0]},
                            {k: v for k, v in episode[0][1].items() if k != "chunk_index"},
                        )
                        episode.clear()
    except BaseException:
        writer.abort()
        raise
    out = writer.finish(
        **{
            s: {k: v for k, v in i.items() if k not in ("episodes", "frames", "records", "episode_lengths", "shards")}
            for s, i in chosen.items()
        }
    )
    if extra:
        out.update(extra)
        write_json_atomic(Path(dst) / METADATA, out)
    return out
