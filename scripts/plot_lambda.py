"""Plot CoLA's learned lambda per layer and component for each stream (the paper's Figure 3).

    python scripts/plot_lambda.py outputs/refcoco/runs/<run>/adapter.safetensors [--out lambda.png] [--json lambda.json]

Reads every ``cola_lambda`` tensor of the adapter file (a fused qkv layer holds three: q, k, v) and draws one
panel per stream with a line per component (q, k, v, o, fc1, fc2) over block depth.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from safetensors.torch import load_file

# Layer name suffix -> component(s); a fused qkv lambda has 3 entries.
COMPONENTS = [
    ("attn.qkv", ("q", "k", "v")),
    ("attention.self.query", ("q",)),
    ("attention.self.key", ("k",)),
    ("attention.self.value", ("v",)),
    ("attention.q_proj", ("q",)),
    ("attention.k_proj", ("k",)),
    ("attention.v_proj", ("v",)),
    ("attn.proj", ("o",)),
    ("attention.output.dense", ("o",)),
    ("attention.o_proj", ("o",)),
    ("mlp.fc1", ("fc1",)),
    ("intermediate.dense", ("fc1",)),
    ("mlp.fc2", ("fc2",)),
    ("output.dense", ("fc2",)),
]
ORDER = ("q", "k", "v", "o", "fc1", "fc2")
STREAMS = {"towers.vision": "vision", "towers.text": "text", "towers.audio": "audio"}
# adapter files written before the towers were named by stream
STREAMS |= {"tower_a": "vision", "tower_b": "text / audio"}


def lambdas_from_state(state: dict) -> dict[str, dict[str, dict[int, float]]]:
    """{stream: {component: {layer: lambda}}} from an adapter state dict."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for key, value in state.items():
        if not key.endswith(".cola_lambda"):
            continue
        layer_name = key[: -len(".cola_lambda")]
        stream = next((s for s in STREAMS if f"{s}." in layer_name), "stream")
        depth = re.search(r"\.(\d+)\.", layer_name)
        comps = next((c for suffix, c in COMPONENTS if layer_name.endswith(suffix)), None)
        if depth is None or comps is None:
            continue
        values = value.flatten().tolist()
        for comp, v in zip(comps, values):
            out.setdefault(STREAMS.get(stream, stream), {}).setdefault(comp, {})[int(depth.group(1))] = float(v)
    return out


def plot(lambdas: dict, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lambdas), figsize=(5 * len(lambdas), 3.5), squeeze=False)
    for ax, (stream, comps) in zip(axes[0], lambdas.items()):
        for comp in ORDER:
            if comp in comps:
                layers = sorted(comps[comp])
                ax.plot(layers, [comps[comp][i] for i in layers], marker="o", label=comp)
        ax.set_title(f"{stream} stream")
        ax.set_xlabel("block")
        ax.set_ylabel("λ")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path, help="adapter.safetensors of a CoLA run (or its run folder)")
    parser.add_argument("--out", type=Path, help="PNG path (default: lambda.png beside the adapter file)")
    parser.add_argument("--json", type=Path, help="also write the values as JSON")
    args = parser.parse_args(argv)
    path = args.adapter / "adapter.safetensors" if args.adapter.is_dir() else args.adapter
    if not path.is_file():
        print(f"error: adapter file not found: {path}", file=sys.stderr)
        return 2
    lambdas = lambdas_from_state(load_file(str(path)))
    if not lambdas:
        print(f"error: {path} holds no cola_lambda tensor (is it a CoLA run?)", file=sys.stderr)
        return 2
    out = plot(lambdas, args.out or path.with_name("lambda.png"), f"λ per layer — {path.parent.name}")
    if args.json:
        args.json.write_text(json.dumps(lambdas, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
