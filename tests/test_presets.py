"""Presets: the dynamics preset's per-family values (MaskGIT's demo recipe), through ``preset``, the CLI and sweeps."""

from __future__ import annotations

import pytest

from jasmine.cli import _train_parse
from jasmine.cli import parse_command as parse
from jasmine.models.genie import DYNAMICS
from jasmine.presets import FAMILY_VALUES, PRESETS, preset
from jasmine.sweep import build_plan, load_spec


@pytest.mark.parametrize("name", sorted(PRESETS["dynamics"]))
@pytest.mark.parametrize("family", sorted(DYNAMICS))
def test_every_family_accepts_its_own_preset(family, name):
    cfg = preset("dynamics", name, family)
    assert cfg.dynamics == family
    DYNAMICS[family].check_config(cfg.model)  # refuses options of other families
    if not DYNAMICS[family].continuous:  # the MAE's latents are checked against the run's MAE
        DYNAMICS[family].check_sampling(cfg.val_sampling, cfg.tokenizer_model)


def test_maskgit_tiny_is_the_demo_recipe_and_other_families_keep_the_shared_values():
    assert set(FAMILY_VALUES) <= set(DYNAMICS)
    tiny = preset("dynamics", "tiny")  # MaskGIT is the preset's own family
    assert (tiny.dynamics, tiny.model.action_mode, tiny.val_sampling.steps) == ("maskgit", "add", 4)
    assert tiny == preset("dynamics", "tiny", "maskgit")
    causal = preset("dynamics", "tiny", "causal")
    assert (causal.model.action_mode, causal.val_sampling.steps, causal.val_sampling.temperature) == (
        "prepend",
        None,
        0,
    )
    diffusion = preset("dynamics", "tiny", "diffusion")
    assert (diffusion.val_sampling.temperature, diffusion.val_sampling.ordinal) == (1.0, False)
    assert preset("dynamics", "coinrun").model.action_mode == "prepend"  # the reference's scale keeps its recipe
    with pytest.raises(ValueError, match="'gan' is not a dynamics family"):
        preset("dynamics", "tiny", "gan")
    with pytest.raises(ValueError, match="only the dynamics has families"):
        preset("lam", "tiny", "maskgit")


@pytest.mark.parametrize(
    "argv, want",
    [
        ([], ("maskgit", "add", 4)),
        (["--dynamics", "causal"], ("causal", "prepend", None)),
        (["--dynamics=causal", "--preset", "tiny"], ("causal", "prepend", None)),
        (["--model.action-mode", "prepend", "--val-sampling.steps", "25"], ("maskgit", "prepend", 25)),
        (["--preset", "micro"], ("maskgit", "prepend", None)),
    ],
)
def test_train_dynamics_flags_pick_the_family_values(argv, want):
    cfg = _train_parse("dynamics")(argv, "jasmine train dynamics")
    assert (cfg.dynamics, cfg.model.action_mode, cfg.val_sampling.steps) == want


def test_a_sweeps_family_axis_resolves_each_familys_preset(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"""
seeds = [0]
[data]
path = "{tmp_path / "data"}"
[tokenizer]
preset = "tiny"
[lam]
preset = "tiny"
[dynamics]
preset = "tiny"
[eval]
clips = 2
[axes.family]
maskgit = {{ "dynamics.dynamics" = "maskgit" }}
causal = {{ "dynamics.dynamics" = "causal" }}
"""
    )
    plan = build_plan(load_spec(spec, tmp_path / "out"), parse)
    dyn = {j.uses[0][0]: j for j in plan.jobs.values() if j.stage == "dynamics"}
    configs = {cell: parse(j.command, j.flags) for cell, j in dyn.items()}
    assert {c: (cfg.model.action_mode, cfg.val_sampling.steps) for c, cfg in configs.items()} == {
        "family=maskgit": ("add", 4),
        "family=causal": ("prepend", None),
    }
