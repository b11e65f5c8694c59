"""``clara train scp|instruct|e2e --config FILE.yaml [key=value ...]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..train.config import STAGES


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"help_option_names": ["-h", "--help"]})
    def train(
        stage: str = typer.Argument(..., help=f"Stage to run: {', '.join(STAGES)}."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML TrainConfig."),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. lr=5e-4 model.compression_ratio=32."),
    ) -> None:
        """Train one CLaRa stage (resumes from output_dir/checkpoint when present).

        Several processes: `accelerate launch -m clara train ...` with an accelerate,
        DeepSpeed or FSDP config (see configs/).
        """
        from ..train import TrainConfig
        from ..train import train as run

        if stage not in STAGES:
            raise typer.BadParameter(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}", param_hint="STAGE")
        try:
            cfg = TrainConfig.load(config, overrides or [], stage=stage)
        except (ValueError, TypeError) as e:
            raise typer.BadParameter(str(e)) from None
        result = run(cfg)
        typer.echo(f"done: step {result.get('step')} loss {result.get('loss', float('nan')):.4f}; final checkpoint in {cfg.output_dir}/final")
