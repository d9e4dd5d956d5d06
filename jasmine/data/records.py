"""Episode record format (versioned, pickle-free) and atomic ArrayRecord shard writing.

One ArrayRecord record holds one episode chunk, encoded as:

    bytes 0..3    magic  b"JSMR"
    bytes 4..5    format version, uint16 little-endian (currently 1)
    bytes 6..9    header length L, uint32 little-endian
    bytes 10..    UTF-8 JSON header of L bytes:
                    {"meta": {...}, "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}}
    then          raw C-order little-endian array bytes; offsets are relative to the end
                  of the header and 64-byte aligned

Decoding only ever calls ``json.loads`` and ``np.frombuffer`` with a whitelisted dtype, so a
downloaded dataset cannot execute code. Arrays used by jasmine:

    frames   uint8 [T, H, W, C]   video frames
    actions  int32 [T]            actions[t] is the action taken after observing frames[t];
                                   absent for action-free video
    tokens   int32 [T, N]         tokenizer ids (pre-tokenized datasets)

Per-record ``meta``: source, level_seed, episode_id, chunk_index (plus anything extra).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"JSMR"
FORMAT_VERSION = 1
SHARD_SUFFIX = ".array_record"
TMP_SUFFIX = ".tmp"
_PREFIX = struct.Struct("<4sHI")
_ALIGN = 64
ALLOWED_DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "uint32", "float16", "float32")


class RecordFormatError(ValueError):
    """A record's bytes do not follow the jasmine record format."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode_record(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Serialise named arrays plus JSON-able metadata into one record."""
    specs, blobs, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dtype.name not in ALLOWED_DTYPES:
            raise RecordFormatError(f"array {name!r}: dtype {arr.dtype} not in {ALLOWED_DTYPES}")
        data = arr.astype(dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": len(data)}
        blobs += [data, b"\0" * _pad(len(data))]
        offset += len(data) + _pad(len(data))
    header = json.dumps({"meta": meta, "arrays": specs}, sort_keys=True, separators=(",", ":")).encode()
    header += b" " * _pad(_PREFIX.size + len(header))
    return b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *blobs])


def decode_record(buf: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`encode_record`; arrays are read-only views into ``buf``."""
    if len(buf) < _PREFIX.size:
        raise RecordFormatError(f"record of {len(buf)} bytes is too short")
    magic, version, header_len = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise RecordFormatError(f"bad magic {magic!r} (expected {MAGIC!r}): not a jasmine record")
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"record format version {version}, this jasmine reads {FORMAT_VERSION}")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(buf[_PREFIX.size : start]))
        arrays = {}
        for name, spec in header["arrays"].items():
            if spec["dtype"] not in ALLOWED_DTYPES:
                raise RecordFormatError(f"array {name!r} has disallowed dtype {spec['dtype']!r}")
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            if count * dtype.itemsize != spec["nbytes"] or start + spec["offset"] + spec["nbytes"] > len(buf):
                raise RecordFormatError(f"array {name!r}: size does not match shape {spec['shape']}")
            arr = np.frombuffer(buf, dtype=dtype, count=count, offset=start + spec["offset"])
            arrays[name] = arr.reshape(spec["shape"])
        return arrays, header["meta"]
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordFormatError(f"corrupt record header: {e!r}") from e


class ShardWriter:
    """Writes records into numbered ArrayRecord shards under ``directory``.

    Each shard is written as ``shard-00000.array_record.tmp`` and renamed only when it is
    complete, so an interrupted writer never leaves a shard that a loader would read.
    ``shards`` lists ``(relative file name, [record lengths in frames])`` of finished shards.
    """

    def __init__(self, directory: str | Path, records_per_shard: int = 100, options: str = "group_size:1"):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writer_cls, self.options = ArrayRecordWriter, options
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.records_per_shard = records_per_shard
        self.shards: list[tuple[str, list[int]]] = []
        self._writer = None
        self._lengths: list[int] = []

    def _path(self) -> Path:
        return self.directory / f"shard-{len(self.shards):05d}{SHARD_SUFFIX}"

    def write(self, record: bytes, length: int) -> None:
        if self._writer is None:
            self._writer = self._writer_cls(str(self._path()) + TMP_SUFFIX, self.options)
        self._writer.write(record)
        self._lengths.append(length)
        if len(self._lengths) >= self.records_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        final = self._path()
        os.replace(str(final) + TMP_SUFFIX, final)
        self.shards.append((final.name, self._lengths))
        self._writer, self._lengths = None, []

    def close(self) -> None:
        if self._writer is not None:
            self._finish_shard()

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay)."""
        if self._writer is not None:
            self._writer.close()
            Path(str(self._path()) + TMP_SUFFIX).unlink(missing_ok=True)
            self._writer, self._lengths = None, []

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type is not None else self.close()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
