"""Speed, FLOPs and memory of CoLA against LoRA, HF peft's LoRA and MokA on the real dual-tower shapes.

    python scripts/benchmark.py                      # vision-language: DINOv2-B/14 @ 448 + BERT-B, 40 tokens
    python scripts/benchmark.py --pair av            # audio-visual: DINOv2-B/14 @ 224 + AST on 1-s clips
    python scripts/benchmark.py --tiny --json out.json   # tiny shapes, about a minute on 2 CPU cores
    python scripts/benchmark.py --device cuda --dtype bf16 --batch 8 --compile

The logic is in cola.bench (what is compared and how it is measured: docs/benchmarks/README.md); this script
parses the command line into a cola.bench.BenchConfig and runs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/benchmark.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.bench import METHODS, PAIRS, REPORTED_METHODS, BenchConfig, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pair", choices=PAIRS, default="vl", help="vl: DINOv2-B@448 + BERT-B; av: DINOv2-B@224 + AST")
    p.add_argument("--tiny", action="store_true", help="tiny towers (192 wide, 4 blocks, 112 px): seconds on a CPU")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                   help=f"subset of {' '.join(METHODS)} (default: all; with --tiny: {' '.join(REPORTED_METHODS)})")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="bf16 / fp16: autocast (weights stay fp32; fp16 with a GradScaler)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compilation)")
    p.add_argument("--batch", type=int, nargs="+", default=[2],
                   help="batch size(s); several (e.g. 1 4 8) are measured in one run, interleaved")  # fmt: skip
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="default rank / 2, as rank=R in train.py")
    p.add_argument("--lora-split-fused", action="store_true",
                   help="our lora: per-slice q/k/v adapters on fused qkv (official); default one A/B as HF peft")  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--optimizer", choices=("default", "foreach", "fused"), default="fused",
                   help="AdamW implementation: fused=True (as cola.tasks), torch's default or foreach=True")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute tower blocks in backward (model.gradient_checkpointing=true)")  # fmt: skip
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes (peak_mem_mb = null)")
    p.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of each ratio against the batch size (default with --json and several batch sizes: "
                   "the JSON path with .png)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        return BenchConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(cfg)


if __name__ == "__main__":
    main()
