"""Episode record format (versioned, pickle-free, checksummed) and atomic ArrayRecord shard writing.

One ArrayRecord record holds one episode chunk, encoded as:

    bytes 0..3    magic  b"JSMR"
    bytes 4..5    format version, uint16 little-endian (currently 2)
    bytes 6..9    header length L, uint32 little-endian
    bytes 10..13  CRC-32 of every byte after this prefix, uint32 little-endian
    bytes 14..    UTF-8 JSON header of L bytes:
                    {"meta": {...}, "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}}
    then          raw C-order little-endian array bytes; offsets are relative to the end
                  of the header and 64-byte aligned

Decoding is for untrusted bytes: it only ever calls ``json.loads`` and ``np.frombuffer``
with a whitelisted dtype, checks the checksum and every header field (types, signs,
alignment, bounds), and raises :class:`RecordFormatError` for anything else, so a
downloaded dataset can neither run code nor decode to arrays other than those written.
Arrays used by jasmine:

    frames          uint8 [T, H, W, C]  video frames
    actions         int32 [T]           actions[t] is taken after observing frames[t];
                                         absent for action-free video
    tokens          int32 [T, N]        tokenizer ids (pre-tokenized datasets)
    latent_actions  int32 [T]           LAM action into frame t (pre-tokenized, with a LAM)

Per-record ``meta``: source, level_seed, episode_id, chunk_index (plus anything extra).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"JSMR"
FORMAT_VERSION = 2
SHARD_SUFFIX = ".array_record"
TMP_SUFFIX = ".tmp"
_PREFIX = struct.Struct("<4sHII")
_ALIGN = 64
_MAX_DIMS = 8
ALLOWED_DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "uint32", "float16", "float32")


class DataError(ValueError):
    """Bad or unreadable dataset input; the message names the path."""


class RecordFormatError(DataError):
    """A record's bytes do not follow the jasmine record format."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode_record(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Serialise named arrays plus JSON-able metadata into one record."""
    specs, blobs, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d arrays 1-d
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dtype.name not in ALLOWED_DTYPES:
            raise RecordFormatError(f"array {name!r}: dtype {arr.dtype} not in {ALLOWED_DTYPES}")
        data = arr.astype(dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": len(data)}
        blobs += [data, b"\0" * _pad(len(data))]
        offset += len(data) + _pad(len(data))
    header = json.dumps({"meta": meta, "arrays": specs}, sort_keys=True, separators=(",", ":")).encode()
    header += b" " * _pad(_PREFIX.size + len(header))
    body = b"".join([header, *blobs])
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(body)) + body


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_spec(name: Any, spec: Any, payload: int) -> tuple[np.dtype, list[int], int]:
    """Validate one array's header entry; returns (dtype, shape, offset into the payload)."""
    if not isinstance(name, str) or not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "offset", "nbytes"}:
        raise RecordFormatError(
            f"array {name!r}: header entry must be {{dtype, shape, offset, nbytes}}, got {spec!r:.200}"
        )
    if spec["dtype"] not in ALLOWED_DTYPES:
        raise RecordFormatError(f"array {name!r} has disallowed dtype {spec['dtype']!r:.50}")
    shape, offset, nbytes = spec["shape"], spec["offset"], spec["nbytes"]
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
        raise RecordFormatError(f"array {name!r}: shape {shape!r:.100} is not a list of at most {_MAX_DIMS} sizes >= 0")
    if not (_is_int(offset) and offset >= 0 and offset % _ALIGN == 0):
        raise RecordFormatError(f"array {name!r}: offset {offset!r:.50} is not a non-negative multiple of {_ALIGN}")
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    if not _is_int(nbytes) or nbytes != math.prod(shape) * dtype.itemsize:
        raise RecordFormatError(f"array {name!r}: nbytes {nbytes!r:.50} does not match shape {shape} of {dtype.name}")
    if offset + nbytes > payload:
        raise RecordFormatError(
            f"array {name!r}: bytes [{offset}, {offset + nbytes}) lie outside the {payload}-byte payload"
        )
    return dtype, shape, offset


def decode_record(buf: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`encode_record`; arrays are read-only views into ``buf``.

    Raises :class:`RecordFormatError` (and nothing else) for bytes that are not a valid record.
    """
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise RecordFormatError(f"record is {type(buf).__name__}, not bytes")
    if len(buf) < _PREFIX.size:
        raise RecordFormatError(f"record of {len(buf)} bytes is too short")
    magic, version, header_len, crc = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise RecordFormatError(f"bad magic {magic!r} (expected {MAGIC!r}): not a jasmine record")
    if version != FORMAT_VERSION:
        raise RecordFormatError(
            f"record format version {version}, this jasmine reads {FORMAT_VERSION} "
            f"(regenerate the dataset with this version)"
        )
    start = _PREFIX.size + header_len
    if start > len(buf):
        raise RecordFormatError(f"header length {header_len} runs past the end of the {len(buf)}-byte record")
    if zlib.crc32(memoryview(buf)[_PREFIX.size :]) != crc:
        raise RecordFormatError("checksum mismatch: the record is corrupt or truncated")
    try:
        header = json.loads(bytes(buf[_PREFIX.size : start]).decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RecordFormatError(f"corrupt record header: {e!r:.200}") from None
    if (
        not isinstance(header, dict)
        or set(header) != {"meta", "arrays"}
        or not isinstance(header["meta"], dict)
        or not isinstance(header["arrays"], dict)
    ):
        raise RecordFormatError('corrupt record header: expected {"meta": {...}, "arrays": {...}}')
    arrays = {}
    for name, spec in header["arrays"].items():
        dtype, shape, offset = _check_spec(name, spec, len(buf) - start)
        arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=start + offset)
        arrays[name] = arr.reshape(shape)
    return arrays, header["meta"]


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

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type is not None else self.close()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file (fsynced) and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
