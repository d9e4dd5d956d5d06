"""Orbax checkpoints of the full train state.

A checkpoint at step s holds ``state``: step, params, frozen params, non-trainable model
variables, optimizer state and RNG key. The data iterator's position is the step itself:
batch s is a pure function of (seed, s) for any number of processes or loader workers
(``jasmine.data.loader``), so a run continues exactly, on any process count. Saving is
asynchronous; retention keeps the last ``keep_last``, every ``keep_every``-th step, and the
steps in ``keep_steps`` (the loop keeps the one where WSD's decay starts).
Orbax writes each step to a temporary directory and renames it when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class _QuietReadOnly(logging.Filter):
    """Drop Orbax's notices that a read-only manager (listing or restoring a run) is read-only."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "read_only=True" not in msg and "directory is read only" not in msg


logging.getLogger("absl").addFilter(_QuietReadOnly())


class Checkpointer:
    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        keep_every: int = 0,
        keep_steps=(),
        use_async: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        cm = ocp.checkpoint_managers
        keep = (
            [cm.LatestN(keep_last)]
            + ([cm.EveryNSteps(keep_every)] if keep_every else [])
            + ([cm.CustomSteps(list(keep_steps))] if keep_steps else [])
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(keep),
            enable_async_checkpointing=use_async,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Save ``state`` at ``step``; every process calls this and writes its own shards."""
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restore ``state`` into the shapes, dtypes and shardings of ``abstract_state``."""
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))[
            "state"
        ]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(tree, shardings=None):
    """ShapeDtypeStructs (with target shardings) describing ``tree``."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
        )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
