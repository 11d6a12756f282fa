"""Unimodal pretraining of the tiny DINOv2-shaped ViT used by ``model=tiny`` (the demo and CPU runs).

A random-init frozen tower gives an adapter nothing to adapt, so the tiny vision tower is first pretrained on
its own (no text, no grounding labels): images of random coloured shapes on textured backgrounds, with a
dense objective — every patch predicts the colour and the shape of the object under it (or background) —
which teaches it what real pretrained towers know about images: colour, shape, where things are. Its
weights ship with the repo as ``assets/tiny_vit.safetensors`` (made by this script, float16) and are rebuilt by
``train.py`` when missing.

    python scripts/pretrain_tiny_vit.py assets/tiny_vit.safetensors --dtype float16   # rebuilds the shipped file

The pretraining is :func:`cola.models.pretrain.pretrain_tiny_vit`; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/pretrain_tiny_vit.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.models.pretrain import pretrain_tiny_vit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output .safetensors file")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="storage dtype (the shipped assets/tiny_vit.safetensors is float16: half the size, loaded as float32)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the step lines
    if args.out.exists():
        print(f"{args.out} exists; nothing to do")
        return
    path = pretrain_tiny_vit(args.out, steps=args.steps, batch=args.batch, seed=args.seed, dtype=args.dtype)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
