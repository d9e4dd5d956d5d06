"""Metrics sinks: JSONL (always), TensorBoard event files, and optionally Weights & Biases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    """``log(step, metrics, split)`` appends to ``metrics.jsonl`` and writes TensorBoard scalars."""

    def __init__(
        self,
        run_dir: Path,
        *,
        config: dict[str, Any],
        wandb: bool = False,
        enabled: bool = True,
        run_name: str | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = self._wandb = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:
                raise ImportError("--wandb needs the wandb extra: uv sync --extra wandb") from e
            self._wandb = wb.init(
                project="jasmine",
                name=run_name or Path(run_dir).name,
                config=config,
                dir=str(run_dir),
                resume="allow",
                id=Path(run_dir).absolute().name,
            )

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(
                json.dumps(
                    {"step": step, "split": split, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
                )
                + "\n"
            )
        for k, v in clean.items():
            self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=step)

    def image(self, step: int, name: str, image_HWC) -> None:
        if self.enabled:
            self._tb.add_image(name, image_HWC, step, dataformats="HWC")
            if self._wandb is not None:
                import wandb as wb

                self._wandb.log({name: wb.Image(image_HWC)}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: Path, split: str | None = "train") -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [r for r in rows if split is None or r["split"] == split]
