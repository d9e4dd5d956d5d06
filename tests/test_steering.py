"""Steering measures: the view's shift by phase correlation, which way real actions move it, direction scores."""

import numpy as np
import pytest

from jasmine.eval.steering import direction_scores, global_shift, real_directions, video_shift


def scene(rng, h=32, w=48):
    """A random smooth scene (blurred noise) with a colour channel axis."""
    x = rng.random((h, w))
    for _ in range(3):
        x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 0) + np.roll(x, -1, 1)) / 5
    return np.repeat(x[..., None], 3, axis=-1)


@pytest.mark.parametrize("dy, dx", [(0, 3), (0, -2), (2, 0), (-3, 1)])
def test_the_measured_shift_has_the_right_sign_and_size(dy, dx):
    a = scene(np.random.default_rng(0))
    b = np.roll(a, (dy, dx), axis=(0, 1))  # the content moved down by dy, right by dx
    got = global_shift(a, b)
    assert got == pytest.approx((dy, dx), abs=0.3)
    video = np.stack([np.roll(a, (dy * k, dx * k), axis=(0, 1)) for k in range(4)])
    assert video_shift(video) == pytest.approx((3 * dy, 3 * dx), abs=0.6)


def test_real_directions_are_read_off_the_data():
    """LEFT moves the view left by 1 px, RIGHT right, UP up; the others do nothing: each key's sign comes out."""
    rng = np.random.default_rng(1)
    meanings = ["NOOP", "LEFT", "RIGHT", "UP"]
    moves = {0: (0, 0), 1: (0, -1), 2: (0, 1), 3: (-1, 0)}
    clips, acts = [], []
    for _ in range(6):
        frame, a = scene(rng), rng.integers(0, 4, 9)
        frames = [frame]
        for t in range(8):
            frames.append(np.roll(frames[-1], moves[a[t]], axis=(0, 1)))
        clips.append(np.stack(frames))
        acts.append(a)
    res = real_directions(np.stack(clips), np.stack(acts), meanings)
    assert {k: (v["axis"], v["sign"]) for k, v in res.items()} == {
        "ArrowLeft": ("x", -1),
        "ArrowRight": ("x", 1),
        "ArrowUp": ("y", -1),
    }
    assert real_directions(np.stack(clips), np.zeros((6, 9), int), meanings) == {}  # never taken: no direction


def test_a_held_key_is_read_off_its_effect_over_the_frames_it_is_held():
    """LEFT jolts the view 1 px right in the frame it leads into, then moves it 1 px left in each of the 3 after
    (CoinRun's camera catching up): held for 6 frames the view goes left, while its first frame says right."""
    rng = np.random.default_rng(2)
    meanings = ["NOOP", "LEFT", "RIGHT", "UP"]
    effect = {1: [1, -1, -1, -1], 2: [-1, 1, 1, 1]}  # dx of frames t+1 .. t+4 caused by the action at t
    clips, acts = [], []
    for _ in range(80):
        a = rng.integers(0, 4, 16)
        frames = [scene(rng)]
        for t in range(15):
            dx = sum(effect[int(a[t - m])][m] for m in range(4) if t - m >= 0 and int(a[t - m]) in effect)
            dy = -1 if a[t] == 3 else 0
            frames.append(np.roll(frames[-1], (dy, dx), axis=(0, 1)))
        clips.append(np.stack(frames))
        acts.append(a)
    clips, acts = np.stack(clips), np.stack(acts)
    first = real_directions(clips, acts, meanings)
    held = real_directions(clips, acts, meanings, horizon=6)
    assert (first["ArrowLeft"]["sign"], first["ArrowRight"]["sign"]) == (1, -1)
    assert (held["ArrowLeft"]["sign"], held["ArrowRight"]["sign"], held["ArrowUp"]["sign"]) == (-1, 1, -1)
    e = 4 / 3  # against the other actions, a third of them RIGHT with the opposite effect
    assert held["ArrowLeft"]["lags"] == pytest.approx([e, -e, -e, -e, 0, 0], abs=0.3)
    # frame k of the hold carries the presses 0..k before it: 6 e(0) + 5 e(1) + 4 e(2) + 3 e(3)
    assert held["ArrowLeft"]["shift"] == pytest.approx(e * (6 - 5 - 4 - 3), abs=2.0)  # unweighted: -2.7
    assert held["ArrowLeft"]["horizon"] == 6
    assert real_directions(clips, acts, meanings, horizon=99)["ArrowLeft"]["horizon"] == 15  # capped at the clips


def test_direction_scores_count_rollouts_moving_the_real_way():
    expected = {"ArrowLeft": {"axis": "x", "sign": -1}, "ArrowUp": {"axis": "y", "sign": -1}}
    shifts = {
        "ArrowLeft": np.array([[0, -3.0], [0, -0.5], [0, 2.0], [5, -1.2]]),  # 2 of 4 move >= 1 px left
        "ArrowUp": np.array([[-2.0, 0], [-1.0, 9], [0.0, 0], [1.0, 0]]),  # 2 of 4 move >= 1 px up
    }
    random = np.array([[0, -1.5], [0, 0], [-4, 0], [0, 0]])
    res = direction_scores(shifts, random, expected, {"ArrowLeft": 1, "ArrowUp": 2})
    assert res["ArrowLeft"]["correct"] == 0.5 and res["ArrowLeft"]["chance"] == 0.25 and res["ArrowLeft"]["code"] == 1
    assert res["ArrowUp"]["correct"] == 0.5 and res["ArrowUp"]["chance"] == 0.25
