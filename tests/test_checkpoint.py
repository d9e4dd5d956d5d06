"""Checkpoints you can trust: a flipped bit or unreadable data is reported as corruption (naming the earlier
checkpoints), another model as a mismatch, a dtype is never cast, and a NaN state is never saved."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jasmine.train.checkpoint import CheckpointCorrupt, Checkpointer, CheckpointMismatch, abstract, digest


def state(scale=1.0):
    return {"params": {"w": jnp.arange(64.0).reshape(8, 8) * scale, "b": jnp.ones(8, jnp.bfloat16)},
            "step": jnp.int32(3), "rng": jnp.arange(2, dtype=jnp.uint32)}  # fmt: skip


def saved(tmp_path, steps=(2, 4)):
    ck = Checkpointer(tmp_path / "ck", use_async=False)
    for s in steps:
        ck.save(s, state(s))
    ck.close()
    return Checkpointer(tmp_path / "ck", read_only=True)


def test_a_checkpoint_restores_exactly_and_its_digest_sees_every_flipped_bit(tmp_path):
    ck = saved(tmp_path)
    got = ck.restore(4, abstract(state()))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state(4)), strict=True))
    w = np.arange(64, dtype=np.float32)
    sums, finite = digest({"w": jnp.asarray(w)})
    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = w.view(np.uint32).copy()
        bits[rng.integers(64)] ^= np.uint32(1 << int(rng.integers(32)))
        assert digest({"w": jnp.asarray(bits.view(np.float32))})[0] != sums
    swapped = w.copy()
    swapped[[3, 5]] = swapped[[5, 3]]
    assert digest({"w": jnp.asarray(swapped)})[0] != sums and finite


def test_changed_data_is_corruption_and_names_the_earlier_checkpoints(tmp_path):
    saved(tmp_path).close()
    meta = tmp_path / "ck" / "4" / "digest" / "metadata"
    sums = json.loads(meta.read_text())
    sums["params/w"] += 1  # what a flipped bit in the stored array looks like against its checksum
    meta.write_text(json.dumps(sums))
    with pytest.raises(CheckpointCorrupt, match=r"ck/4 is corrupt: params/w .*earlier checkpoints: \[2\]"):
        Checkpointer(tmp_path / "ck", read_only=True).restore(4, abstract(state()))
    for f in (tmp_path / "ck" / "2" / "state").rglob("*"):  # garbage in every data file of step 2
        if f.is_file() and f.parent.name == "d":  # OCDBT's data files
            f.write_bytes(b"\x00" * f.stat().st_size)
    with pytest.raises(CheckpointCorrupt, match="ck/2 (cannot be read|is corrupt)"):
        Checkpointer(tmp_path / "ck", read_only=True).restore(2, abstract(state()))


def test_another_model_or_dtype_is_a_mismatch_never_a_cast(tmp_path):
    ck = saved(tmp_path)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, state())
    with pytest.raises(CheckpointMismatch, match=r"params/w: checkpoint float32\[8, 8\], model bfloat16\[8, 8\]"):
        ck.restore(4, abstract(bf16))
    wider = {**state(), "params": {**state()["params"], "w": jnp.zeros((8, 9))}}
    with pytest.raises(CheckpointMismatch, match=r"params/w: checkpoint float32\[8, 8\], model float32\[8, 9\]"):
        ck.restore(4, abstract(wider))
    with pytest.raises(CheckpointMismatch, match="params/extra: not in the checkpoint"):
        ck.restore(4, abstract({**state(), "params": {**state()["params"], "extra": jnp.zeros(2)}}))


def test_a_state_with_nan_is_never_saved(tmp_path):
    ck = Checkpointer(tmp_path / "ck", use_async=False)
    ck.save(2, state())
    bad = {**state(), "params": {**state()["params"], "w": state()["params"]["w"].at[0, 0].set(jnp.nan)}}
    with pytest.raises(FloatingPointError, match="NaN or infinity at step 3: not saved .*step 2"):
        ck.save(3, bad)
    ck.close()
    assert Checkpointer(tmp_path / "ck", read_only=True).all_steps() == [2]


def test_a_run_loaded_again_is_copied_from_memory_until_its_checkpoint_changes(runs, tmp_path, monkeypatch):
    import shutil

    from flax import nnx

    from jasmine.train.components import load_run

    run = tmp_path / "tok"
    shutil.copytree(runs / "tok", run)
    _, first, step = load_run(run)
    a = jax.tree.leaves(nnx.state(first))
    expect = [np.array(x) for x in a]
    zeros = jax.jit(lambda t: [x * 0 for x in t], donate_argnums=0)(a)  # as a train step donates
    assert all(x.is_deleted() for x in a) and not any(np.any(z) for z in zeros)
    monkeypatch.setattr(Checkpointer, "restore", lambda *a: pytest.fail("an unchanged checkpoint was read again"))
    _, again, _ = load_run(run)
    b = jax.tree.leaves(nnx.state(again))
    assert len(b) == len(expect) > 10 and all(np.array_equal(x, y) for x, y in zip(expect, b, strict=True))
    monkeypatch.undo()
    meta = run / "checkpoints" / str(step) / "digest" / "metadata"
    sums = json.loads(meta.read_text())
    sums[next(iter(sums))] += 1  # the checkpoint changed on disk: read (and checked) again
    meta.write_text(json.dumps(sums))
    with pytest.raises(CheckpointCorrupt, match=f"tok/checkpoints/{step} is corrupt"):
        load_run(run)
