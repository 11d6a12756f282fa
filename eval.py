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

from cola.resolvers import quote_numeric_group_overrides  # also registers ${cola.minilm:}

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from cola.harness import evaluate
    from cola.validation import SetupError

    hc = HydraConfig.get()
    try:
        evaluate(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    except SetupError as e:
        if os.environ.get("COLA_TRACEBACK"):
            raise
        print(f"\nerror: {e}\n(set COLA_TRACEBACK=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quote_numeric_group_overrides(sys.argv[1:])]  # rank=8 selects configs/rank/8.yaml
    main()
