"""`jasmine data atari` and `jasmine data minatar`: a few short episodes each, through the loader."""

import pytest

from jasmine.data.dataset import DataError, iter_records
from jasmine.data.games import AtariArgs, MinAtarArgs, generate
from jasmine.data.loader import make_loader

GAMES = {
    "atari": (AtariArgs, "pong", ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]),
    "minatar": (MinAtarArgs, "breakout", ["NOOP", "LEFT", "RIGHT"]),
}


def make(kind, out, **kw):
    pytest.importorskip("ale_py" if kind == "atari" else "minatar")  # installed by `make test`
    cls, game, _ = GAMES[kind]
    base = dict(
        game=game,
        out=out,
        train_episodes=3,
        val_episodes=1,
        test_episodes=1,
        max_episode_len=40,
        min_episode_len=8,
        size="32x32",
        chunk_len=16,
    )
    return generate(cls(**{**base, **kw}), kind)


@pytest.mark.parametrize("kind", list(GAMES))
def test_game_episodes_round_trip_deterministic_and_disjoint_by_seed(kind, tmp_path):
    meta = make(kind, tmp_path / "a")
    assert meta["generator"]["action_meanings"] == GAMES[kind][2]
    n = len(GAMES[kind][2])  # the minimal action set's actions are distinct: each is its own effective class
    assert meta["generator"]["effective_actions"] == {"names": GAMES[kind][2], "of_action": list(range(n))}
    assert meta["num_actions"] == len(GAMES[kind][2]) and meta["frame_shape"] == [32, 32, 3]
    seeds = {}
    for split in ("train", "val", "test"):
        recs = list(iter_records(tmp_path / "a", meta, split))
        seeds[split] = {m["env_seed"] for _, m in recs}
        for arrays, _ in recs:
            assert arrays["actions"].max() < meta["num_actions"] and len(arrays["frames"]) <= 16
            assert arrays["frames"].std() > 0  # a rendered game, not a blank
    assert not (seeds["train"] & seeds["val"] or seeds["train"] & seeds["test"] or seeds["val"] & seeds["test"])
    assert all(8 <= n <= 40 for n in meta["splits"]["train"]["episode_lengths"])
    batch = next(iter(make_loader(tmp_path / "a", "train", seq_len=8, batch_size=2, seed=0, image_shape=(32, 32, 3))))
    assert batch["frames"].shape == (2, 8, 32, 32, 3) and batch["actions"].shape == (2, 8)
    make(kind, tmp_path / "b")
    for shard in sorted((tmp_path / "a").rglob("*.array_record")):  # the same arguments, the same bytes
        assert shard.read_bytes() == (tmp_path / "b" / shard.relative_to(tmp_path / "a")).read_bytes()
    other = make(kind, tmp_path / "c", seed=1)
    assert other["splits"]["train"]["env_seeds"][0] == 3_000_000


@pytest.mark.parametrize(
    "kind, kw, match",
    [
        ("atari", {"game": "pongg"}, r"--game 'pongg' is not an Atari ROM of ale-py; choose from .*pong"),
        ("atari", {"sticky_actions": 1.5}, r"--sticky-actions must be in \[0, 1\]"),
        ("minatar", {"game": "pong"}, r"--game 'pong' is not a MinAtar game; choose from asterix, breakout"),
        ("minatar", {"min_episode_len": 50}, r"need 1 <= --min-episode-len 50 <= --max-episode-len 40"),
        ("atari", {"size": "32"}, r"--size '32' is not HxW"),
    ],
)
def test_bad_game_arguments_are_named(kind, kw, match, tmp_path):
    with pytest.raises(DataError, match=match):
        make(kind, tmp_path / "x", **kw)
    assert not (tmp_path / "x" / "metadata.json").exists()


def test_minatar_palette_recolours_the_same_episodes(tmp_path):
    """The bright palette paints the same cells (same episodes, same actions) in other, saturated colours."""
    import numpy as np

    own = make("minatar", tmp_path / "own", train_episodes=1, val_episodes=0, test_episodes=0)
    bright = make("minatar", tmp_path / "bright", train_episodes=1, val_episodes=0, test_episodes=0, palette="bright")
    assert bright["generator"]["palette"] == "bright" and own["generator"]["palette"] == "cubehelix"
    (a, _), (b, _) = (next(iter_records(tmp_path / d, m, "train"))[:2] for d, m in (("own", own), ("bright", bright)))
    assert np.array_equal(a["actions"], b["actions"])
    assert np.array_equal(a["frames"].any(-1), b["frames"].any(-1))  # the same cells lit
    lit = b["frames"].any(-1)
    assert (
        not np.array_equal(a["frames"], b["frames"]) and b["frames"][lit].max(-1).min() > a["frames"][lit].max(-1).min()
    )
