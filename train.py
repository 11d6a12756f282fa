"""Train and test a dual-stream model with CoLA (or a baseline): ``python train.py task=refcoco peft=cola rank=8``.

With no arguments: CoLA on the embedded synthetic grounding set with tiny towers (the demo).
See configs/train.yaml for every option and README.md for sweeps (re-running one into its folder runs only what is
not finished: cola/sweep.py), SLURM and W&B.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import cola.resolvers  # noqa: F401  (registers the ${cola.*} resolvers)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cola.cli import fail, remove_if_empty
    from cola.harness import train_job
    from cola.tasks.base import NonFiniteLossError
    from cola.validation import SetupError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train_job(cfg, HydraConfig.get())  # a sweep job may be skipped or resumed (cola.sweep)
    except (SetupError, NonFiniteLossError) as e:  # a message for the user, not a bug: no traceback
        remove_if_empty(run_dir)  # refused before writing anything: leave no empty run folder behind
        if os.environ.get("COLA_TRACEBACK"):
            raise
        fail(str(e), 2 if isinstance(e, SetupError) else 3)
    monitor = str(cfg.task.monitor)
    return metrics.get(monitor)


if __name__ == "__main__":
    from cola.cli import precheck

    precheck("train", sys.argv[1:])  # Hydra's own errors (unknown key or option) as one paragraph, exit 2
    main()
