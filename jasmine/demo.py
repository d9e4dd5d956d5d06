"""``jasmine demo``: the README's main command, as resumable stages.

data (CoinRun, or a MinAtar game with ``--env minatar:GAME``) → tokenizer → LAM → dynamics (on the frozen LAM's
actions) → eval (report). The recipe of each stage is its ``tiny`` preset (docs/tuning.md). A re-run reuses every
stage whose output is complete and was made with the same arguments, and resumes a training stage that was
interrupted.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from jasmine import config as C
from jasmine.data.coinrun import CoinRunArgs, generate
from jasmine.data.dataset import METADATA
from jasmine.data.games import MinAtarArgs
from jasmine.data.games import generate as generate_game
from jasmine.data.inspect import InspectArgs, inspect
from jasmine.eval.evaluate import EvalArgs, evaluate
from jasmine.eval.report import metrics_table
from jasmine.models.genie import DYNAMICS
from jasmine.presets import preset
from jasmine.train.checkpoint import Checkpointer
from jasmine.train.components import COMPONENTS
from jasmine.train.loop import train

SIZES = {  # preset → data and eval sizes
    "tiny": dict(
        train_episodes=400,
        val_episodes=40,
        test_episodes=64,
        max_episode_len=1000,
        clips=32,
        frames=16,
        maskgit_sampling={},  # eval samples as the run validates (its preset's val_sampling)
    ),
    "micro": dict(
        train_episodes=6,
        val_episodes=2,
        test_episodes=2,
        max_episode_len=60,
        clips=2,
        frames=6,
        maskgit_sampling={"steps": 2},
        permutations=100,
    ),
}


MINATAR_EPISODES = {"train_episodes": 5, "val_episodes": 2.5, "test_episodes": 11}
"""MinAtar's random-policy episodes are short (~20 frames in Breakout): more of them, for about 40k training
frames and enough held-out episodes for 10,000 test transitions' worth of latent-action figures."""
MINATAR_LAM = dict(steps=2.0, roll_decoder=8, roll_decoder_from=0.4, residual=True)
"""The MinAtar demo's LAM (docs/tuning.md, Breakout): twice the preset's steps, the decoder predicting the change,
and from 40% of training on its window rolled by up to 8 px (1.25 cells) away from the encoder's, so the codes
name the move rather than where the player ends up. The frames use the bright palette: with MinAtar's colours
the paddle is too faint for the pixel loss and the LAM's codes go unused."""
MINATAR_TOKENIZER_STEPS = 0.25
"""The MinAtar demo's tokenizer trains a quarter of the preset's steps (800): MinAtar's frames are a few
flat-coloured cells, reconstructed at 36.1 dB on the demo's test clips (50.9 on Breakout's held-out frames after the
full 3,200), far above what the dynamics reaches (about 22 dB); the demo then takes 9.6 minutes on 2 cores, from a
fresh clone (docs/evaluation.md)."""


def tokenizer_config(args: DemoArgs, name: str, base: dict) -> C.TrainConfig:
    """The tokenizer stage's config (``name``: tokenizer, or mae for diffusion): the preset's; for a MinAtar game
    the FSQ tokenizer trains ``MINATAR_TOKENIZER_STEPS`` of its steps."""
    cfg = replace(preset(name, args.preset), out=args.out / name, **base)
    if not args.env.startswith("minatar:") or name != "tokenizer":
        return cfg
    return replace(cfg, steps=int(cfg.steps * MINATAR_TOKENIZER_STEPS))


def lam_config(args: DemoArgs, base: dict) -> C.LAMTrainConfig:
    """The LAM stage's config: the preset's, with the MinAtar recipe above for a MinAtar game."""
    cfg = replace(preset("lam", args.preset), out=args.out / "lam", **base)
    if not args.env.startswith("minatar:"):
        return cfg
    r = MINATAR_LAM
    steps = int(cfg.steps * r["steps"])
    return replace(
        cfg,
        steps=steps,
        roll_decoder=r["roll_decoder"],
        roll_decoder_from=int(steps * r["roll_decoder_from"]),
        model=replace(cfg.model, residual=r["residual"]),
    )


COINRUN_MASKGIT_STEPS = 3200
"""The CoinRun demo's MaskGIT trains 3,200 steps, a third more than the `tiny` preset's 2,400 (which the ablations
and the Breakout demo keep): the 15-minute budget has the room, and over 3 seeds the longer run beats copy-last by
more (docs/ablations.md, "Dynamics steps")."""


def dynamics_config(args: DemoArgs, fields: dict) -> C.DynamicsTrainConfig:
    """The dynamics stage's config: the family's preset with ``fields``; CoinRun's MaskGIT at the `tiny` preset
    trains ``COINRUN_MASKGIT_STEPS``."""
    cfg = replace(preset("dynamics", args.preset, args.dynamics), **fields)
    if args.env == "coinrun" and args.preset == "tiny" and args.dynamics == "maskgit":
        cfg = replace(cfg, steps=COINRUN_MASKGIT_STEPS)
    return cfg


@dataclass(frozen=True)
class DemoArgs:
    """Generate CoinRun (or a MinAtar game), train tokenizer, LAM and dynamics, evaluate, and write the report."""

    out: Path = Path("runs/demo")
    """Directory for every output of the demo."""
    preset: Literal["tiny", "micro"] = "tiny"
    """tiny: the full demo (~15 min on 2 CPU cores); micro: a one-minute smoke run of the same pipeline."""
    seed: int = 0
    dynamics: Literal["maskgit", "causal", "diffusion"] = "maskgit"
    """Dynamics family (a non-default one trains into dynamics-FAMILY/ and evaluates into eval-FAMILY/); diffusion
    trains an MAE tokenizer (mae/) instead of the VQ/FSQ one."""
    env: str = "coinrun"
    """coinrun (Genie's case study) or minatar:GAME (breakout, asterix, freeway, seaquest, space_invaders): a
    10x10 game where each key moves the player a whole cell at once, so steering is unmistakable."""


def _data_stage(args: DemoArgs, sizes: dict) -> Path:
    data = args.out / "data"
    counts = {k: sizes[k] for k in ("train_episodes", "val_episodes", "test_episodes", "max_episode_len")}
    kind, _, game = args.env.partition(":")
    if kind == "coinrun" and not game:
        gen, make = CoinRunArgs(out=data, seed=args.seed, overwrite=True, **counts), generate
    elif kind == "minatar" and game:
        scale = {k: int(v * MINATAR_EPISODES.get(k, 1)) for k, v in counts.items()}
        gen = MinAtarArgs(game=game, out=data, seed=args.seed, overwrite=True, palette="bright", **scale)
        make = partial(generate_game, kind="minatar")
    else:
        raise ValueError(f"--env {args.env!r}: use coinrun or minatar:GAME")
    meta_path = data / METADATA
    if meta_path.exists():
        recorded = json.loads(meta_path.read_text()).get("generator", {})
        old = recorded.get("args", recorded)  # CoinRun nests its arguments; the game generators do not
        want = {k: v for k, v in C.to_dict(gen).items() if k not in ("out", "overwrite")}
        if all(old.get(k) == v for k, v in want.items()):
            print(f"[demo] data: reusing {data}")
            return data
        trained = [p.name for p in sorted(args.out.iterdir()) if p.is_dir() and any(p.glob("checkpoints/*"))]
        if trained:  # a run's config names the data's path, not its content: it would be reused on other data
            raise ValueError(
                f"--out {args.out}: its data was made with other arguments (this jasmine's demo makes it "
                f"differently) and {', '.join(trained)} trained on it; pass another --out, or remove those runs"
            )
    print(f"[demo] data: generating {args.env} into {data}")
    make(gen)
    inspect(InspectArgs(dir=data, out=args.out / "inspect"))
    return data


def _train_stage(name: str, cfg: C.TrainConfig) -> Path:
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if (out / "config.json").exists() and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        saved = C.load_config(out / "config.json")
        done = Checkpointer(ckpt_dir, read_only=True).latest_step()
        filled = (
            "resume",
            "tokenizer_model",
            "mae_model",
            "tokenizer_window",
            "tokenizer_step",
            "tokenizer_hash",
            "lam_model",
            "lam_window",
            "lam_step",
            "lam_hash",
            "num_actions",
            "image_size",
        )  # set from the runs and data
        same = not [d for d in C.diff(saved, cfg) if not d.startswith(filled)]
        if same and done == cfg.steps:
            print(f"[demo] {name}: reusing {out} (step {done})")
            return out
        if same:
            print(f"[demo] {name}: resuming {out} from step {done}")
            cfg = replace(cfg, resume=True)
        else:
            raise ValueError(f"{out} holds a {name} run with another config; remove it or pass another --out")
    else:
        print(f"[demo] {name}: training into {out}")
    result = train(cfg, COMPONENTS[name])
    if result["stopped"]:
        print(f"[demo] {name}: interrupted ({result['stopped']}); re-run the demo to resume from step {result['step']}")
        raise SystemExit(128 + int(getattr(signal.Signals, result["stopped"])))
    return out


def demo(args: DemoArgs) -> dict:
    t0 = time.perf_counter()
    sizes = SIZES[args.preset]
    data = _data_stage(args, sizes)
    base = dict(data=data, seed=args.seed)
    family = DYNAMICS[args.dynamics]
    tok_name = "mae" if family.continuous else "tokenizer"  # what the family's dynamics reads
    tok = _train_stage(tok_name, tokenizer_config(args, tok_name, base))
    lam = _train_stage("lam", lam_config(args, base))
    suffix = "" if args.dynamics == DemoArgs.dynamics else f"-{args.dynamics}"
    dyn_cfg = dynamics_config(args, {**base, "out": args.out / f"dynamics{suffix}", "tokenizer": tok, "lam": lam})
    dyn = _train_stage("dynamics", dyn_cfg)
    print("[demo] eval: rollouts on held-out clips")
    ev = args.out / f"eval{suffix}"
    sampling = replace(dyn_cfg.val_sampling, **(sizes["maskgit_sampling"] if family.maskgit_options else {}))
    res = evaluate(
        EvalArgs(
            **asdict(sampling),
            run=dyn,
            data=data,
            clips=sizes["clips"],
            frames=sizes["frames"],
            delta_t=min(4, sizes["frames"] - 1),
            seed=args.seed,
            out=ev,
            batch_size=min(8, sizes["clips"]),
            permutations=sizes.get("permutations", 1000),
        )
    )
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n[demo] done in {minutes:.1f} min. Outputs:")
    for label, path in (
        ("dataset", data),
        ("data contact sheet", args.out / "inspect" / "contact_sheet.png"),
        (f"{tok_name} run", tok),
        ("LAM run", lam),
        ("dynamics run", dyn),
        ("report", ev / "report.md"),
        ("metrics", ev / "metrics.json"),
        ("plot", ev / "psnr_ssim.png"),
        ("rollouts GIF", ev / "rollouts.gif"),
    ):
        print(f"  {label:20} {path}")
    print("\n" + metrics_table(res))
    print(f"\nplay it in the browser: jasmine play --run {dyn}")
    return res
