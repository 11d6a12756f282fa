"""Plot where an adaptive intra path (``peft.intra=adalora``) put its rank: the final rank of every layer, per stream
over block depth, for one or more runs side by side (e.g. LoRA-AdaLoRA against CoLA-AdaLoRA: does the cross-modal
path change where the intra rank goes?).

    python scripts/plot_intra_ranks.py RUN_A RUN_B [--labels LoRA-AdaLoRA CoLA-AdaLoRA] [--out ranks.png] [--json ranks.json]

Each argument is a run folder, its ``adapter.safetensors`` or its ``adapter.ranks.json``: the rank budget a run writes
with its adapters (:func:`cola.peft.save_adapters`; a fused qkv layer holds three ranks: q, k, v). The figure has one
panel per stream in its top row, the rank summed over each block's matrices against depth (a line per run), and in
its bottom row the mean rank of each component (q, k, v, o, fc1, fc2) over the blocks (a bar per run); the initial
and target ranks per matrix are drawn as dashed lines. Layers are grouped as :mod:`cola.lambdas` groups λ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/plot_intra_ranks.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.lambdas import ORDER, STREAM_NAMES, Profile, profile_from_layers  # noqa: E402


def read_budget(path: Path) -> dict[str, Any]:
    """The rank budget of a run folder, adapter file or ``*.ranks.json``; raises ``FileNotFoundError`` /
    ``ValueError`` naming the file when it holds none."""
    from cola.peft import RANKS_KEY
    from cola.peft.state import ranks_path

    if path.is_dir():
        path = path / "adapter.safetensors"
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"rank file not found: {path}")
        return json.loads(path.read_text())
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if RANKS_KEY not in meta:
        raise ValueError(
            f"{path} holds no rank budget ({RANKS_KEY}): was it trained with an adaptive intra variant "
            f"(peft.intra=adalora)? {ranks_path(path).name} is not there either"
        )
    return json.loads(meta[RANKS_KEY])


def rank_profile(budget: dict[str, Any]) -> Profile:
    """``{stream: {component: {block: rank}}}`` of a rank budget (names relative to the task or the encoder)."""
    return profile_from_layers(budget["ranks"])


def _streams(profiles: list[Profile]) -> list[str]:
    names = {s for p in profiles for s in p}
    return sorted(names, key=lambda s: (STREAM_NAMES.index(s) if s in STREAM_NAMES else len(STREAM_NAMES), s))


def plot(profiles: list[Profile], labels: list[str], budgets: list[dict[str, Any]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    streams = _streams(profiles)
    fig, axes = plt.subplots(2, len(streams), figsize=(5 * len(streams), 7), squeeze=False)
    width = 0.8 / max(1, len(profiles))
    for col, stream in enumerate(streams):
        top, bottom = axes[0][col], axes[1][col]
        comps = [c for c in ORDER if any(c in p.get(stream, {}) for p in profiles)]
        for k, (profile, label) in enumerate(zip(profiles, labels, strict=True)):
            per = profile.get(stream, {})
            blocks = sorted({b for c in per.values() for b in c})
            top.plot(blocks, [sum(per[c].get(b, 0) for c in per) for b in blocks], marker="o", label=label)
            means = [statistics.fmean(per[c].values()) if c in per else 0.0 for c in comps]
            bottom.bar(
                [i + (k - (len(profiles) - 1) / 2) * width for i in range(len(comps))], means, width, label=label
            )
        budget = budgets[0]
        n = max(len({c for c in p.get(stream, {})}) for p in profiles)  # matrices per block
        for value, name in ((budget["initial_rank"], "initial"), (budget["target_rank"], "target")):
            if isinstance(value, int):
                top.axhline(value * n, ls="--", lw=0.8, color="grey")
                bottom.axhline(value, ls="--", lw=0.8, color="grey")
                bottom.annotate(name, (len(comps) - 0.5, value), fontsize=7, color="grey", va="bottom", ha="right")
        top.set_title(f"{stream} stream")
        top.set_xlabel("block")
        top.set_ylabel("rank kept in the block (sum over its matrices)")
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.legend(fontsize=8)
        bottom.set_xticks(range(len(comps)), comps)
        bottom.set_ylabel("mean rank over the blocks")
        bottom.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders, adapter.safetensors or adapter.ranks.json")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the run folders' names)")
    parser.add_argument("--out", type=Path, help="PNG path (default: intra_ranks.png beside the first run's adapter)")
    parser.add_argument("--json", type=Path, help="also write {label: {stream: {component: {block: rank}}}} as JSON")
    args = parser.parse_args(argv)
    labels = args.labels or [(p if p.is_dir() else p.parent).name for p in args.runs]
    if len(labels) != len(args.runs):
        print(f"error: --labels gives {len(labels)} labels for {len(args.runs)} runs", file=sys.stderr)
        return 2
    try:
        budgets = [read_budget(p) for p in args.runs]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    profiles = [rank_profile(b) for b in budgets]
    first = args.runs[0] if args.runs[0].is_dir() else args.runs[0].parent
    title = "final intra rank per layer — " + " vs ".join(
        f"{label} ({b['budget']['final']} of {b['budget']['initial']} kept)"
        for label, b in zip(labels, budgets, strict=True)
    )
    out = plot(profiles, labels, budgets, args.out or first / "intra_ranks.png", title)
    if args.json:
        args.json.write_text(json.dumps(dict(zip(labels, profiles, strict=True)), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
