"""`jasmine actions`: LAM codes against real actions (count matrix, NMI, heatmap, mapping) and its errors."""

import json

import numpy as np
import pytest
from conftest import write_synthetic

from jasmine.eval import actions as A


def test_nmi_against_hand_computed_values():
    assert A.nmi(np.array([[2, 0], [0, 2]])) == pytest.approx(1.0)
    assert A.nmi(np.array([[0, 5, 0], [3, 0, 0], [0, 0, 7]])) == pytest.approx(1.0)  # any bijection
    assert A.nmi(np.array([[1, 1], [1, 1]])) == pytest.approx(0.0, abs=1e-12)
    # p = [[.5, .25], [0, .25]]: I = 0.215762 nats, H(code) = 0.562335, H(action) = ln 2
    assert A.nmi(np.array([[2, 1], [0, 1]])) == pytest.approx(0.215762 / ((0.562335 + np.log(2)) / 2), rel=1e-5)
    assert A.count_matrix(np.array([[0, 1], [1, 1]]), np.array([[2, 0], [0, 0]]), 2, 3).tolist() == [
        [0, 0, 1],
        [3, 0, 0],
    ]


def test_codes_pair_with_the_action_taken_from_the_earlier_frame(tmp_path, monkeypatch, capsys):
    write_synthetic(tmp_path / "ds", lengths=(40, 33, 25, 60), frame_shape=(8, 8, 3))  # actions[t] = t % 7

    class FakeLAM:  # code of transition t-1 -> t := index of frame t-1, mod 7 (channel 0 holds the index)
        class cfg:
            vocab_size = 7

    monkeypatch.setattr(A, "load_lam", lambda run: (FakeLAM(), 2))
    monkeypatch.setattr(A, "latent_actions", lambda lam, window, frames: frames[:, :-1, 0, 0, 0].astype(int) % 7)
    res = A.actions_report(
        A.ActionsArgs(run=tmp_path / "run", data=tmp_path / "ds", split="val", clips=4, frames=8, out=tmp_path / "out")
    )
    counts = np.asarray(res["counts"])
    assert counts.sum() == 4 * 7 and (counts == np.diag(np.diag(counts))).all()  # exactly diagonal when aligned
    assert res["nmi"] == pytest.approx(1.0) and res["codes"][3]["actions"][0] == {"action": 3, "name": "3", "p": 1.0}
    assert (tmp_path / "out" / "actions.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "actions.json").read_text())["transitions"] == 28
    assert "NMI(LAM code; real action) = 1.000" in capsys.readouterr().out


def test_actions_errors_are_named(tmp_path, monkeypatch):
    from jasmine import config as C
    from jasmine.data.dataset import DataError

    write_synthetic(tmp_path / "noact", lengths=(40, 33), frame_shape=(8, 8, 3), actions=False)
    (tmp_path / "tok").mkdir()
    C.save_config(C.TokenizerTrainConfig(), tmp_path / "tok" / "config.json")
    with pytest.raises(ValueError, match=r"is a TokenizerTrainConfig run; jasmine actions needs a LAM or dynamics run"):
        A.actions_report(A.ActionsArgs(run=tmp_path / "tok", data=tmp_path / "noact"))
    monkeypatch.setattr(A, "load_lam", lambda run: (None, 2))
    with pytest.raises(DataError, match=r"noact/metadata.json: the dataset has no ground-truth actions"):
        A.actions_report(A.ActionsArgs(run=tmp_path / "tok", data=tmp_path / "noact"))


def test_actions_command_on_a_trained_lam(tmp_path, capsys):
    from jasmine.cli import main
    from jasmine.config import LAMTrainConfig, OptimConfig
    from jasmine.models.lam import LAMConfig
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    write_synthetic(tmp_path / "ds", lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    lam = LAMConfig(patch_size=8, model_dim=32, ffn_dim=64, num_blocks=1, num_heads=2, latent_dim=8, num_latents=4)
    train(
        LAMTrainConfig(
            data=tmp_path / "ds",
            out=tmp_path / "lam",
            steps=2,
            batch_size=2,
            seq_len=4,
            image_size=(16, 16, 3),
            val_every=2,
            ckpt_every=2,
            log_every=1,
            model=lam,
            optim=OptimConfig(warmup_steps=1),
        ),
        COMPONENTS["lam"],
        progress=False,
    )
    main(
        [
            "actions",
            "--run",
            str(tmp_path / "lam"),
            "--data",
            str(tmp_path / "ds"),
            "--split",
            "val",
            "--clips",
            "4",
            "--frames",
            "7",
        ]
    )
    res = json.loads((tmp_path / "lam" / "actions" / "actions.json").read_text())
    assert np.asarray(res["counts"]).shape == (4, 7) and res["transitions"] == 4 * 6 and 0 <= res["nmi"] <= 1
    assert "code  0" in capsys.readouterr().out
