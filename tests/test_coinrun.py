import numpy as np
import pytest
from conftest import cli

from jasmine.data.coinrun import CoinRunArgs, episodes, generate, level_ranges
from jasmine.data.dataset import DataError, iter_records, read_metadata


class ScriptedEnv:
    """A gym3-style vectorised env whose k-th episode (in start order) lasts ``length(k, slot)`` steps.

    Pixel [0, 0, 0] of each frame holds the episode's number, [0, 0, 1] the frame index in it.
    """

    def __init__(self, num, length):
        self.num, self.length, self.count = num, length, 0
        self.t, self.ends, self.ids = np.zeros(num, int), np.zeros(num, int), np.zeros(num, int)
        self.first = np.ones(num, bool)
        self._start()

    def _start(self):
        for i in np.flatnonzero(self.first):
            self.ids[i], self.ends[i], self.t[i] = self.count, self.length(self.count, i), 0
            self.count += 1

    def observe(self):
        obs = np.zeros((self.num, 64, 64, 3), np.uint8)
        obs[:, 0, 0, 0], obs[:, 0, 0, 1] = self.ids, self.t
        return None, {"rgb": obs}, self.first.copy()

    def get_info(self):
        return [{"level_seed": int(k)} for k in self.ids]

    def act(self, _):
        self.t += 1
        self.first = self.t >= self.ends
        self._start()


def test_kept_episodes_are_the_first_to_start_whatever_their_length():
    # slot 0 plays long episodes, the others short ones: the first n to *finish* would be mostly short
    env = ScriptedEnv(3, lambda k, slot: 100 if slot == 0 else 20)
    eps = list(episodes(env, 6, np.random.default_rng(0), max_len=60, min_len=5))
    assert [seed for _, _, seed in eps] == [0, 1, 2, 3, 4, 5]  # episodes 0, 1, 2 start together, then 3, 4, 5, ...
    assert [len(f) for f, _, _ in eps] == [60, 20, 20, 20, 20, 20]  # episode 0 is cut at max_len, not dropped
    for frames, _, seed in eps:
        assert (frames[:, 0, 0, 0] == seed).all() and (frames[:, 0, 0, 1] == np.arange(len(frames))).all()


def test_short_episodes_are_replaced_by_later_starts():
    env = ScriptedEnv(2, lambda k, slot: 3 if k % 3 == 1 else 10)  # episodes 1, 4, 7 end before min_len
    eps = list(episodes(env, 5, np.random.default_rng(0), max_len=60, min_len=5))
    assert [seed for _, _, seed in eps] == [0, 2, 3, 5, 6]


def test_held_actions_repeat_for_one_to_n_steps():
    env = ScriptedEnv(3, lambda k, slot: 400)
    fresh = list(episodes(env, 3, np.random.default_rng(0), max_len=300, min_len=5))
    held = list(episodes(ScriptedEnv(3, lambda k, slot: 400), 3, np.random.default_rng(0), max_len=300, min_len=5,
                         action_hold=8))  # fmt: skip
    for (_, acts, _), (_, fresh_acts, _) in zip(held, fresh, strict=True):
        change = np.flatnonzero(np.diff(acts)) + 1
        runs = np.diff(np.concatenate([[0], change, [len(acts)]]))
        assert runs.max() <= 8 * 2 and runs.mean() > 3  # holds of 1..8 (two equal draws in a row may join)
        assert np.diff(fresh_acts).astype(bool).mean() > 0.85  # the default: a fresh action every step
        assert len(np.unique(acts)) >= 10 and acts.max() < 15
    with pytest.raises(ValueError, match="--action-hold must be >= 1"):
        generate(CoinRunArgs(out=None, action_hold=0))


needs_procgen = pytest.mark.skipif(
    __import__("importlib").util.find_spec("procgen") is None, reason="needs the coinrun extra"
)


def small(out, seed=0, **kw):
    args = dict(
        train_episodes=4,
        val_episodes=2,
        test_episodes=2,
        seed=seed,
        max_episode_len=60,
        chunk_len=25,
        num_envs=4,
        records_per_shard=3,
    )
    return CoinRunArgs(out=out, **{**args, **kw})


def shard_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.array_record"))}


@pytest.fixture(scope="module")
def coinrun_dir(tmp_path_factory):
    pytest.importorskip("procgen")
    root = tmp_path_factory.mktemp("coinrun") / "a"
    generate(small(root))
    return root


def test_episodes_have_the_case_study_format(coinrun_dir):
    meta = read_metadata(coinrun_dir)
    assert meta["frame_shape"] == [64, 64, 3] and meta["num_actions"] == 15
    assert {s: meta["splits"][s]["episodes"] for s in ("train", "val", "test")} == {"train": 4, "val": 2, "test": 2}
    assert meta["generator"]["args"]["seed"] == 0
    for arrays, rec in iter_records(coinrun_dir, meta, "train"):
        assert arrays["frames"].dtype == np.uint8 and arrays["frames"].shape[1:] == (64, 64, 3)
        assert arrays["actions"].dtype == np.int32 and arrays["actions"].shape == arrays["frames"].shape[:1]
        assert 0 <= arrays["actions"].min() and arrays["actions"].max() < 15
        assert len(arrays["frames"]) <= 25 and {"source", "level_seed", "episode_id", "chunk_index"} <= rec.keys()
    assert all(16 <= n <= 60 for n in meta["splits"]["train"]["episode_lengths"])


def test_effective_classes_follow_procgens_action_table(coinrun_dir):
    from procgen import ProcgenGym3Env

    from jasmine.data.dataset import effective_actions

    combos = ProcgenGym3Env(num=1, env_name="coinrun").get_combos()
    names, of_action = effective_actions(read_metadata(coinrun_dir))
    assert len(combos) == len(of_action) == 15
    for keys, cls in zip(combos, of_action, strict=True):  # CoinRun: LEFT/RIGHT move, UP jumps, the rest do nothing
        move = "left" if "LEFT" in keys else "right" if "RIGHT" in keys else None
        expected = "+".join(k for k in (move, "jump" if "UP" in keys else None) if k) or "none"
        assert names[cls] == expected, keys


def test_same_arguments_give_byte_identical_records(coinrun_dir, tmp_path):
    generate(small(tmp_path / "b"))
    assert shard_bytes(coinrun_dir) == shard_bytes(tmp_path / "b")

    def strip(m):
        return {k: v for k, v in m.items()}

    assert strip(read_metadata(coinrun_dir)) == strip(read_metadata(tmp_path / "b"))
    generate(small(tmp_path / "c", seed=1))
    assert shard_bytes(tmp_path / "c") != shard_bytes(coinrun_dir)


def test_splits_use_disjoint_level_ranges(coinrun_dir):
    meta = read_metadata(coinrun_dir)
    ranges = level_ranges(small(coinrun_dir))
    spans = sorted(ranges.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    for split, (lo, hi) in ranges.items():
        assert meta["splits"][split]["level_seeds"] == [lo, hi]
        for _, rec in iter_records(coinrun_dir, meta, split):
            assert lo <= rec["level_seed"] < hi


def test_existing_dataset_needs_overwrite(coinrun_dir):
    with pytest.raises(DataError, match="already holds a dataset.*--overwrite"):
        generate(small(coinrun_dir))


@needs_procgen
@pytest.mark.heavy
def test_cli_generates_and_inspects(tmp_path):
    out = tmp_path / "cli"

    def run(*a):
        res = cli(*a)
        assert res.returncode == 0, res.stderr
        return res

    gen = run(
        "data",
        "coinrun",
        "--out",
        str(out),
        "--train-episodes",
        "2",
        "--val-episodes",
        "1",
        "--test-episodes",
        "1",
        "--max-episode-len",
        "40",
        "--num-envs",
        "2",
    )
    assert "frames/s" in gen.stdout and "train" in gen.stdout
    insp = run("data", "inspect", str(out), "--episodes", "2")
    assert "action histogram" in insp.stdout and "episode length" in insp.stdout
    assert (out / "inspect" / "contact_sheet.png").stat().st_size > 0
    assert (out / "inspect" / "episodes.gif").stat().st_size > 0
    bench = run("bench", "data", str(out), "--batch-size", "2", "--batches", "3", "--num-workers", "0",
                "--step-preset", "micro", "--steps", "2")  # fmt: skip
    assert "frames/s" in bench.stdout and "tokenizer train step (micro preset" in bench.stdout
