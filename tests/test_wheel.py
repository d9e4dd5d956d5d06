"""The package as a user installs it: ``uv build`` makes a wheel holding everything (the play page included), and a
fresh virtual environment with only that wheel and its locked dependencies runs ``jasmine --help``,
``jasmine play --help``, finds the play page, generates CoinRun and trains a micro tokenizer from outside the
source tree (the same commands as the demo's first stages: the demo itself runs in test_sample)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import xla_env

ROOT = Path(__file__).resolve().parents[1]
PLAY_STATIC = ("jasmine/play/static/index.html", "jasmine/play/static/play.js", "jasmine/play/static/play.css")


def uv() -> list[str]:
    """uv itself: $UV (set by ``uv run``), uv on PATH, or the ``uv`` module of the Python that installed it."""
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    if shutil.which("uv"):
        return [shutil.which("uv")]
    for python in ("python3", sys.executable):
        if subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    pytest.skip("uv is not installed")


def run(cmd: list, **kw) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.heavy(later=True)  # after the demo test: the micro demo's programs are then in the compilation cache
def test_the_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    pytest.importorskip("procgen")
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    run([*uv(), "build", "--wheel", "--out-dir", dist, ROOT], cwd=ROOT)
    (wheel,) = dist.glob("jasmine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PLAY_STATIC) <= names, "the play page ships in the wheel"
    assert not [n for n in names if n.startswith(("tests/", "docs/", "notebooks/"))]

    # the locked versions of the runtime dependencies (already in uv's cache), then the wheel itself
    reqs = tmp_path / "requirements.txt"
    run(
        [
            *uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--extra",
            "coinrun",
            "--extra",
            "play",
            "-o",
            reqs,
        ],
        cwd=ROOT,
    )
    run([*uv(), "venv", "--quiet", "--python", sys.executable, venv])
    python = venv / "bin" / "python"
    run([*uv(), "pip", "install", "--quiet", "--python", python, "-r", reqs, f"{wheel}[coinrun,play]"])
    work.mkdir()
    jasmine = venv / "bin" / "jasmine"
    env = {k: v for k, v in xla_env(1).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run([python, "-c", "import jasmine; print(jasmine.__file__)"], cwd=work, env=env)
    assert str(venv) in where and str(ROOT) not in where, where
    assert "jasmine demo" in run([jasmine, "--help"], cwd=work, env=env)
    assert "--max-sessions" in run([jasmine, "play", "--help"], cwd=work, env=env)
    listing = "from jasmine.play.server import STATIC; print(*sorted(STATIC.iterdir()))"
    static = run([python, "-c", listing], cwd=work, env=env)
    assert all(str(venv / "lib") in f for f in static.split()) and len(static.split()) >= len(PLAY_STATIC)
    data = work / "data"
    sizes = ("--train-episodes", 3, "--val-episodes", 1, "--test-episodes", 1, "--max-episode-len", 40)
    run([jasmine, "data", "coinrun", "--out", data, *sizes], cwd=work, env=env)
    out = run([jasmine, "train", "tokenizer", "--preset", "micro", "--data", data, "--out", work / "tok", "--steps", 2],
              cwd=work, env=env)  # fmt: skip
    assert (work / "tok" / "checkpoints" / "2").is_dir(), out
