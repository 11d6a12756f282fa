"""Representation similarity (linear CKA) between two adapted models, layer by layer, on a split.

    python scripts/cka.py outputs/refcoco/runs/<lora run> outputs/refcoco/runs/<cola run> [--split val]
        [--max-batches 20] [--out cka.json]

Rebuilds both runs from their folders (config.yaml + adapter.safetensors), feeds both the same batches and
compares, for every block of each tower, the mean-pooled token features (real tokens only) with linear
CKA (Kornblith et al., 2019). Low CKA in a block means the two methods changed that block's features
differently. Both runs must share the task and towers. Writes a JSON table and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from cola.analysis import linear_cka
from cola.harness import load_run
from cola.validation import SetupError


def _inputs(module, batch):
    """The streams' inputs of a batch (keyed by stream), as the task module feeds the encoder."""
    return module.encoder_inputs(batch)


@torch.no_grad()
def collect(module, loader, max_batches: int) -> dict[str, list[torch.Tensor]]:
    enc = module.encoder
    feats: dict[str, list[torch.Tensor]] = {}
    module.eval()
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        out = enc(_inputs(module, batch), return_layers={s: list(range(t.depth)) for s, t in enc.towers.items()})
        for stream, layers in out.layers.items():
            mask, prefix = out.masks[stream], out.num_prefix[stream]
            w = mask[:, prefix:].float()
            for j, h in enumerate(layers):
                pooled = (h[:, prefix:] * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
                feats.setdefault(f"{stream}/{j}", []).append(pooled.float().cpu())
    return feats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--split", default="val", help="val, or a test split name of the task")
    parser.add_argument("--max-batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("cka.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. data.root=PATH")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            feats = []
            for run in (args.run_a, args.run_b):
                _, dm, module, ckpt = load_run(run, Path(tmp) / run.name, args.overrides)
                if ckpt is not None:
                    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
                    module.load_state_dict(state, strict=False)
                dm.setup("fit" if args.split == "val" else "test")
                if args.split == "val":
                    loader = dm.val_dataloader()
                else:
                    if args.split not in dm.test_splits:
                        raise SetupError(f"--split {args.split!r} is not one of {['val', *dm.test_splits]}")
                    loader = dm.test_dataloader()[list(dm.test_splits).index(args.split)]
                feats.append(collect(module, loader, args.max_batches))
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = {k: linear_cka(torch.cat(feats[0][k]), torch.cat(feats[1][k])) for k in feats[0] if k in feats[1]}
    args.out.write_text(json.dumps(table, indent=2))
    for k, v in table.items():
        stream, block = k.split("/")
        print(f"{stream} block {block:>2}: CKA {v:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for stream in dict.fromkeys(k.split("/")[0] for k in table):
        keys = sorted(int(k.split("/")[1]) for k in table if k.startswith(f"{stream}/"))
        ax.plot(keys, [table[f"{stream}/{j}"] for j in keys], marker="o", label=stream)
    ax.set_xlabel("block")
    ax.set_ylabel("linear CKA")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    png = args.out.with_suffix(".png")
    fig.savefig(png, dpi=120)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
