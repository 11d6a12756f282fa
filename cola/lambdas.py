"""CoLA's learned λ as a profile across depth: ``{stream: {component: {block: λ}}}`` (the paper's Figure 3).

The same profile is read from three places and drawn one way:

- an adapter file's ``cola_lambda`` tensors (:func:`profile_from_state`; ``scripts/plot_lambda.py``);
- a run folder's ``lambda.json`` (:func:`profile_from_layers`; written by :class:`cola.analysis.LambdaLogger`);
- a W&B run's summary, where every layer's λ is a value named ``lambda/<stream>.<component>/<block>``
  (:func:`summary_values` writes them, :func:`profile_from_summary` reads them back).

A fused q/k/v layer holds three λ (q, k, v); the components are q, k, v, o, fc1, fc2 (:data:`ORDER`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Layer name suffix -> component(s); a fused qkv lambda has 3 entries. Longer suffixes first where one ends another.
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
STREAM_NAMES = ("vision", "text", "audio")
LEGACY_TOWERS = {"tower_a": "vision", "tower_b": "text / audio"}  # adapter files from before the streams had names
SUMMARY_PREFIX = "lambda/"
SUMMARY_KEY = re.compile(r"^lambda/(?P<stream>[^/.]+)\.(?P<component>[^/]+)/(?P<block>\d+)$")

Profile = dict[str, dict[str, dict[int, float]]]


def _stream(name: str) -> str:
    if m := re.search(r"towers\.(\w+)\.", name):
        return m.group(1)
    first = name.split(".", 1)[0]
    if first in STREAM_NAMES:
        return first
    return next((label for tower, label in LEGACY_TOWERS.items() if f"{tower}." in name), "stream")


def profile_from_layers(layers: Mapping[str, Iterable[float]]) -> Profile:
    """The profile of ``{layer name: [λ, ...]}`` (``lambda.json``, or an adapter file's names without
    ``.cola_lambda``); names without a block number or a known component are left out."""
    out: Profile = {}
    for name, values in layers.items():
        depth = re.search(r"\.(\d+)\.", name)
        comps = next((c for suffix, c in COMPONENTS if name.endswith(suffix)), None)
        if depth is None or comps is None:
            continue
        for comp, value in zip(comps, list(values)):
            out.setdefault(_stream(name), {}).setdefault(comp, {})[int(depth.group(1))] = float(value)
    return out


def profile_from_state(state: Mapping[str, Any]) -> Profile:
    """The profile of an adapter state dict (every ``*.cola_lambda`` tensor)."""
    suffix = ".cola_lambda"
    return profile_from_layers(
        {k[: -len(suffix)]: v.flatten().tolist() for k, v in state.items() if k.endswith(suffix)}
    )


def summary_values(profile: Profile) -> dict[str, float]:
    """``lambda/<stream>.<component>/<block>`` -> λ (blocks as two digits, so they sort in depth order)."""
    return {
        f"{SUMMARY_PREFIX}{stream}.{comp}/{block:02d}": value
        for stream, comps in profile.items()
        for comp, blocks in comps.items()
        for block, value in blocks.items()
    }


def profile_from_summary(summary: Mapping[str, Any]) -> Profile:
    """The profile held by a W&B run's summary (:func:`summary_values`' names); empty when it has none."""
    out: Profile = {}
    for key, value in summary.items():
        m = SUMMARY_KEY.match(str(key))
        if m and isinstance(value, (int, float)):
            out.setdefault(m["stream"], {}).setdefault(m["component"], {})[int(m["block"])] = float(value)
    return out


def mean_profile(profiles: list[Profile]) -> Profile:
    """The per-layer mean of several runs' profiles (the seeds of one setting); a layer some runs lack is averaged
    over the runs that have it."""
    values: dict[tuple[str, str, int], list[float]] = {}
    for profile in profiles:
        for stream, comps in profile.items():
            for comp, blocks in comps.items():
                for block, v in blocks.items():
                    values.setdefault((stream, comp, block), []).append(v)
    out: Profile = {}
    for (stream, comp, block), vs in sorted(values.items()):
        out.setdefault(stream, {}).setdefault(comp, {})[block] = statistics.fmean(vs)
    return out


def plot_profile(profile: Profile, title: str):
    """A matplotlib figure: one panel per stream (vision, text, audio), one line per component (:data:`ORDER`) over
    block depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    streams = sorted(profile, key=lambda s: (STREAM_NAMES.index(s) if s in STREAM_NAMES else len(STREAM_NAMES), s))
    fig, axes = plt.subplots(1, len(streams), figsize=(5 * len(streams), 3.5), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        comps = profile[stream]
        for comp in [*ORDER, *sorted(set(comps) - set(ORDER))]:
            if comp in comps:
                blocks = sorted(comps[comp])
                ax.plot(blocks, [comps[comp][i] for i in blocks], marker="o", label=comp)
        ax.set_title(f"{stream} stream")
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("λ")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_profile_plot(profile: Profile, out: Path, title: str) -> Path:
    """:func:`plot_profile` written to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = plot_profile(profile, title)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
