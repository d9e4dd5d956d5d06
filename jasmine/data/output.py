"""Where a new dataset is written: never over anything jasmine did not write, never over its own inputs, and never
leaving a half dataset in place of a whole one.

A writer fills a hidden sibling folder (``.NAME.jasmine-tmp-PID``); :meth:`Staging.commit` fsyncs every file and
folder in it and swaps it in. ``--overwrite`` therefore keeps the old dataset readable until the new one is complete;
interrupted, the old one stays where it was and the sibling can be deleted. Refused, with the folder named:

- an output equal to, inside, or a parent of an input;
- a non-empty output that is not a jasmine dataset (even with ``--overwrite``);
- a jasmine dataset that also holds files jasmine does not write there (even with ``--overwrite``);
- a jasmine dataset without ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from jasmine.data.records import SHARD_SUFFIX, TMP_SUFFIX, DataError

METADATA = "metadata.json"
SPLIT_DIRS = ("train", "val", "test")
# What jasmine writes in a dataset folder: its metadata, split folders of shards, and `data inspect`/`dedup` reports.
OWN_ENTRIES = {METADATA, *SPLIT_DIRS, "inspect", "dedup.json"}


def is_jasmine_dataset(root: Path) -> bool:
    """Whether ``root`` holds a ``metadata.json`` that says it is a jasmine dataset."""
    try:
        meta = json.loads((root / METADATA).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == "jasmine-episodes"


def _foreign_entries(root: Path) -> list[str]:
    """Entries of a jasmine dataset that jasmine did not write (``inspect/`` reports are its own)."""
    foreign = [e.name for e in root.iterdir() if e.name not in OWN_ENTRIES]
    for split in SPLIT_DIRS:
        d = root / split
        if d.is_dir():
            ok = (SHARD_SUFFIX, SHARD_SUFFIX + TMP_SUFFIX)
            foreign += [f"{split}/{e.name}" for e in d.iterdir() if not (e.is_file() and e.name.endswith(ok))]
        elif d.exists():
            foreign.append(split)
    return sorted(foreign)


def check_output(root: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse to write a dataset into ``root`` unless that can lose nothing (see the module docstring)."""
    root = Path(root)
    out = root.resolve()
    for src in inputs:
        s = Path(src).resolve()
        if s == out or out in s.parents or s in out.parents:
            how = "is" if s == out else "contains" if out in s.parents else "is inside"
            raise DataError(f"--out {root} {how} the input {src}; write the dataset to a folder of its own")
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"--out {root} is a file, not a folder")
    if not any(root.iterdir()):
        return
    if not is_jasmine_dataset(root):
        raise DataError(
            f"--out {root} is not empty and is not a jasmine dataset (no {METADATA} of a jasmine dataset); jasmine "
            "never deletes what it did not write, with or without --overwrite: choose a new or empty folder"
        )
    if not overwrite:
        raise DataError(f"{root} already holds a dataset ({METADATA} exists); pass --overwrite to replace it")
    foreign = _foreign_entries(root)
    if foreign:
        raise DataError(
            f"--overwrite: {root} also holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which "
            "jasmine did not write there; move them out first (jasmine never deletes them)"
        )


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """A dataset being written: ``path`` is the hidden sibling to fill; ``commit`` swaps it in, ``abort`` drops it."""

    def __init__(self, root: str | Path, *, overwrite: bool, inputs: Iterable[str | Path] = ()):
        self.root = Path(root)
        check_output(self.root, overwrite, inputs)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.root.parent / f".{self.root.name}.jasmine-tmp-{os.getpid()}"
        if self.path.exists():  # a leftover of this very name: only jasmine makes such a folder
            shutil.rmtree(self.path)
        self.path.mkdir()

    def commit(self) -> None:
        """Make the staged dataset durable (fsync every file and folder), then put it at ``root``."""
        for folder, _dirs, files in os.walk(self.path):
            for name in files:
                _fsync(Path(folder) / name)
            _fsync(Path(folder), directory=True)
        old = None
        if self.root.exists():
            check_output(self.root, overwrite=True)  # still ours to replace (nothing appeared in the meantime)
            if any(self.root.iterdir()):
                old = self.root.parent / f".{self.root.name}.jasmine-old-{os.getpid()}"
                os.rename(self.root, old)
            else:
                self.root.rmdir()
        os.rename(self.path, self.root)
        _fsync(self.root.parent, directory=True)
        if old is not None:  # the replaced jasmine dataset (checked above to hold only what jasmine wrote)
            shutil.rmtree(old)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
