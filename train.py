"""Train and test a dual-stream model with CoLA (or a baseline): ``python train.py task=refcoco peft=cola rank=8``.

With no arguments: CoLA on the embedded synthetic grounding set with tiny towers (the demo).
See configs/train.yaml for every option and README.md for sweeps, SLURM and W&B.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cola.resolvers import quote_numeric_group_overrides  # also registers ${cola.minilm:}

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cola.harness import train
    from cola.tasks.base import NonFiniteLossError
    from cola.validation import SetupError

    try:
        metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (SetupError, NonFiniteLossError) as e:  # a message for the user, not a bug: no traceback
        if os.environ.get("COLA_TRACEBACK"):
            raise
        print(f"\nerror: {e}\n(set COLA_TRACEBACK=1 for the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(e, SetupError) else 3)
    monitor = str(cfg.task.monitor)
    return metrics.get(monitor)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quote_numeric_group_overrides(sys.argv[1:])]  # rank=8 selects configs/rank/8.yaml
    main()
