"""``metadata.json``: reading it as untrusted input. Every field is type-checked and every size that could size an
allocation is bounded, so a malformed or hostile file raises :class:`DataError` naming it, never another error."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from jasmine.data.records import FORMAT_VERSION, SHARD_SUFFIX, DataError

METADATA = "metadata.json"
GROUPED_VERSION = 3
"""Dataset format 3, the grouped layout: records of ``chunk_len`` (default 8) frames in shards that
ArrayRecord does not compress; a training window is read from the few records it overlaps (an
episode's records are consecutive), never a whole 160-frame chunk. Format 2, the chunked layout:
160-frame records, compressed, a window decompresses and checks its whole record. Both hold the
same records (``jasmine.data.records``); ``jasmine data relayout`` converts between them."""
READABLE_VERSIONS = (FORMAT_VERSION, GROUPED_VERSION)
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

MAX_SIDE = 16384
"""Largest frame side (or per-frame array size) a dataset may declare."""
MAX_FRAME_VALUES = 2**26
"""Largest number of values in one frame (H x W x C): 64 Mi, e.g. 4096 x 4096 x 4."""
MAX_ACTIONS = 2**16
"""Largest action vocabulary (it sizes count tables and embeddings)."""
MAX_COUNT = 2**40
"""Largest episode, frame or record count (or length) a metadata field may hold."""


def read_metadata(root: str | Path) -> dict[str, Any]:
    """Load and check ``root/metadata.json``; raises :class:`DataError` naming the path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist")
    path = root / METADATA
    if not path.exists():
        shards = sorted(root.rglob(f"*{SHARD_SUFFIX}"))
        what = "is empty" if not any(root.iterdir()) else "has no metadata.json (incomplete or not a jasmine dataset)"
        hint = (
            f"; it holds {len(shards)} shard(s) without metadata, e.g. from an interrupted generation" if shards else ""
        )
        raise DataError(f"dataset directory {root} {what}{hint}")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path} is not valid JSON: {e!r:.200}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    if meta.get("format") != "jasmine-episodes":
        raise DataError(f"{path}: 'format' is {meta.get('format')!r}, expected 'jasmine-episodes'")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DataError(
            f"{path}: format_version {meta.get('format_version')!r}, this jasmine reads {list(READABLE_VERSIONS)}"
        )
    for key in ("frame_shape", "num_actions", "splits"):
        if key not in meta:
            raise DataError(f"{path}: missing key {key!r}")
    shape, actions = meta["frame_shape"], meta["num_actions"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and 0 < d <= MAX_SIDE for d in shape)):
        raise DataError(f"{path}: frame_shape {shape!r:.80} is not [H, W, C] of integers in 1..{MAX_SIDE}")
    if math.prod(shape) > MAX_FRAME_VALUES:
        raise DataError(f"{path}: frame_shape {shape} holds over {MAX_FRAME_VALUES:,} values a frame")
    if type(actions) is not int or not 0 <= actions <= MAX_ACTIONS:
        raise DataError(f"{path}: num_actions {actions!r:.80} is not an integer in 0..{MAX_ACTIONS}")
    if not isinstance(meta["splits"], dict) or not all(
        isinstance(k, str) and _SPLIT_NAME.fullmatch(k) for k in meta["splits"]
    ):
        raise DataError(f"{path}: split names must be letters, digits, '_' or '-'")
    for split, info in meta["splits"].items():
        _check_split(path, split, info)
    if "arrays" in meta:
        _check_arrays(path, meta["arrays"])
    gen = meta.get("generator")
    if gen is not None and not isinstance(gen, dict):
        raise DataError(f"{path}: generator must be an object")
    names = (gen or {}).get("action_meanings")
    named = isinstance(names, list) and len(names) <= MAX_ACTIONS
    if names is not None and not (named and all(isinstance(x, str) and len(x) <= 200 for x in names)):
        raise DataError(f"{path}: generator.action_meanings must be a list of names (strings of at most 200 chars)")
    return meta


def _counts(value: Any, bound: int) -> bool:
    """``value`` is a list of integers in 0..bound."""
    return isinstance(value, list) and all(type(n) is int and 0 <= n <= bound for n in value)


def _check_split(path: Path, split: str, info: Any) -> None:
    """A split's entry: its sizes bounded (they size arrays), its shard list well formed."""
    if not isinstance(info, dict):
        raise DataError(f"{path}: split {split!r} is not an object")
    for key in ("episodes", "frames", "records"):
        if key in info and not (type(info[key]) is int and 0 <= info[key] <= MAX_COUNT):
            raise DataError(f"{path}: split {split!r}: {key} {info[key]!r:.50} is not an integer in 0..{MAX_COUNT}")
    if info.get("episode_lengths") is not None and not _counts(info["episode_lengths"], MAX_COUNT):
        raise DataError(f"{path}: split {split!r}: episode_lengths must be a list of integers in 0..{MAX_COUNT}")
    shards = info.get("shards", [])
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and _counts(s.get("lengths"), MAX_COUNT) for s in shards
    ):
        raise DataError(f"{path}: split {split!r}: shards must be a list of {{file, lengths}} with integer lengths")


def _check_arrays(path: Path, arrays: Any) -> None:
    """A pre-tokenized dataset's per-frame arrays: plain numeric dtypes and small shapes."""
    from jasmine.data.records import ALLOWED_DTYPES

    if not isinstance(arrays, dict) or not arrays:
        raise DataError(f"{path}: 'arrays' must map array names to {{dtype, shape}}")
    for name, spec in arrays.items():
        ok = isinstance(spec, dict) and spec.get("dtype") in ALLOWED_DTYPES and _counts(spec.get("shape"), MAX_SIDE)
        if not ok or len(spec["shape"]) > 3 or math.prod(spec["shape"]) > MAX_FRAME_VALUES:
            raise DataError(
                f"{path}: arrays.{name!s:.40} must be {{dtype: one of {', '.join(ALLOWED_DTYPES)}, shape: at most 3 "
                f"sizes of at most {MAX_SIDE}}}"
            )
