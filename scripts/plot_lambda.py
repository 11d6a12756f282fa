"""Plot CoLA's learned lambda per layer and component for each stream (the paper's Figure 3).

    python scripts/plot_lambda.py outputs/refcoco/runs/<run>/adapter.safetensors [--out lambda.png] [--json lambda.json]

Reads every ``cola_lambda`` tensor of the adapter file (a fused qkv layer holds three: q, k, v) and draws one
panel per stream with a line per component (q, k, v, o, fc1, fc2) over block depth (:mod:`cola.lambdas`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/plot_lambda.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.lambdas import profile_from_state, save_profile_plot  # noqa: E402


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
    from safetensors.torch import load_file

    lambdas = profile_from_state(load_file(str(path)))
    if not lambdas:
        print(f"error: {path} holds no cola_lambda tensor (is it a CoLA run?)", file=sys.stderr)
        return 2
    out = save_profile_plot(lambdas, args.out or path.with_name("lambda.png"), f"λ per layer — {path.parent.name}")
    if args.json:
        args.json.write_text(json.dumps(lambdas, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
