"""Orbax checkpoints of the full train state.

A checkpoint at step s holds ``state``: step, params, frozen params, non-trainable model
variables, optimizer state and RNG key. The data iterator's position is the step itself:
batch s is a pure function of (seed, s) for any number of processes or loader workers
(``jasmine.data.loader``), so a run continues exactly, on any process count. Saving is
asynchronous; retention keeps the last ``keep_last``, every ``keep_every``-th step, and the
steps in ``keep_steps`` (the loop keeps the one where WSD's decay starts).
Orbax writes each step to a temporary directory and renames it when complete.

Each checkpoint also holds ``digest``: a checksum of every leaf (a position-weighted sum of its 32-bit words, exact
whatever the sharding, and changed by any single flipped bit). Restoring checks, in order, that the checkpoint's
tree, shapes and dtypes are the model's (:class:`CheckpointMismatch`: another model), that it can be read, and that
every leaf matches its checksum (:class:`CheckpointCorrupt`, naming the earlier checkpoints); nothing is cast.
A state with a NaN or infinity is never saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class _QuietReadOnly(logging.Filter):
    """Drop Orbax's notices that a read-only manager (listing or restoring a run) is read-only."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "read_only=True" not in msg and "directory is read only" not in msg


logging.getLogger("absl").addFilter(_QuietReadOnly())


class CheckpointMismatch(ValueError):
    """The checkpoint holds another model (tree, shape or dtype)."""


class CheckpointCorrupt(ValueError):
    """The checkpoint cannot be read, or its data no longer matches the checksums saved with it."""


def _leaf_checksum(x):
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    words = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
    words = words.astype(jnp.uint32).reshape(-1)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1  # odd: a flipped bit always changes the sum
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _leaf_summary(x):
    """(checksum, all finite) of one leaf: one tiny program per shape and dtype, shared by every leaf like it."""
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True)
    return _leaf_checksum(x), finite


def _paths(tree) -> list[str]:
    """Leaf names, the same for a state and for Orbax's metadata of it."""
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]  # fmt: skip


def digest(tree) -> tuple[dict[str, int], bool]:
    """(checksum per leaf name, whether every float leaf is finite)."""
    out = jax.device_get([_leaf_summary(x) for x in jax.tree.leaves(tree)])
    return dict(zip(_paths(tree), (int(c) for c, _ in out), strict=True)), all(bool(f) for _, f in out)


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
        handlers = {"state": ocp.StandardCheckpointHandler(), "digest": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Save ``state`` and its digest at ``step``; every process calls this and writes its own shards. A state
        with a NaN or infinity is refused (FloatingPointError), so the last checkpoint is always a usable one."""
        sums, finite = digest(state)
        if not finite:
            good = [s for s in self.all_steps() if s < step]
            raise FloatingPointError(
                f"the train state holds NaN or infinity at step {step}: not saved"
                + (f" (the last checkpoint, step {good[-1]}, is from before)" if good else "")
            )
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), digest=ocp.args.JsonSave(sums))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restore ``state`` into the shapes, dtypes and shardings of ``abstract_state``, checked (module docstring)."""
        where = f"checkpoint {self.directory}/{step}"
        earlier = [s for s in self.all_steps() if s < step]
        hint = f"; earlier checkpoints: {earlier[-3:]} (--init-step S, or remove this step)" if earlier else ""
        try:
            meta = self.manager.item_metadata(step)
            stored = meta["state"].tree
        except Exception as e:
            raise CheckpointCorrupt(f"{where} cannot be read ({type(e).__name__}: {e}){hint}") from e
        want = dict(zip(_paths(abstract_state), jax.tree.leaves(abstract_state), strict=True))
        have = dict(zip(_paths(stored), jax.tree.leaves(stored), strict=True))
        diffs = [f"{k}: in the checkpoint only" for k in sorted(have.keys() - want.keys())]
        diffs += [f"{k}: not in the checkpoint" for k in sorted(want.keys() - have.keys())]
        for k, v in want.items():
            h = have.get(k)
            if h is not None and (tuple(h.shape) != tuple(v.shape) or jnp.dtype(h.dtype) != jnp.dtype(v.dtype)):
                diffs.append(f"{k}: checkpoint {h.dtype}{list(h.shape)}, model {v.dtype}{list(v.shape)}")
        if diffs:
            raise CheckpointMismatch(f"{where} does not match this model (another model): {'; '.join(diffs[:5])}")
        has_digest = (self.directory / str(step) / "digest").is_dir()  # checkpoints from before digests have none
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if has_digest:
            items["digest"] = ocp.args.JsonRestore()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise CheckpointCorrupt(f"{where} cannot be read ({type(e).__name__}: {str(e)[:300]}){hint}") from e
        if has_digest:
            sums, _ = digest(out["state"])
            bad = [k for k, v in sums.items() if out["digest"].get(k) != v]
            if bad:
                raise CheckpointCorrupt(
                    f"{where} is corrupt: {', '.join(bad[:3])} no longer match their checksums{hint}"
                )
        return out["state"]

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
