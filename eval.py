"""Evaluate a saved run on its val and test splits: ``python eval.py ckpt_path=outputs/refcoco/runs/<run>``.

``ckpt_path`` may be a run folder, its ``adapter.safetensors`` or one of its ``checkpoints/*.ckpt``; the run's
``config.yaml`` rebuilds the model, and dotted overrides (``data.root=...``) apply on top.
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


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from cola.cli import fail, remove_if_empty
    from cola.harness import evaluate
    from cola.validation import SetupError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        evaluate(cfg, run_dir, list(hc.overrides.task))
    except SetupError as e:
        remove_if_empty(run_dir)
        if os.environ.get("COLA_TRACEBACK"):
            raise
        fail(str(e))


if __name__ == "__main__":
    from cola.cli import precheck

    precheck("eval", sys.argv[1:])
    main()
