"""Adapter-only state dicts and safetensors files (the frozen towers are never saved), and the atomic file write
the whole repo uses (:func:`atomic_replace`; ``cola.io`` builds on it).

A file's metadata holds the peft config (``CONFIG_KEY``) and the intra-path convention of its layers
(``INTRA_KEY``: ``peft.intra`` and the intra scale s), so an rsLoRA adapter can never be loaded as a LoRA one (their
scales differ for the same alpha and rank) nor a DoRA / PiSSA one onto plain LoRA layers. Files written before the
key existed load as ``intra=lora``. An adaptive intra variant (AdaLoRA) also writes its rank budget with the rank
of every layer (``RANKS_KEY``, :func:`cola.peft.inject.intra_budget`); its allocator state is in the tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from cola.dicts import differences

from .inject import adapter_layers, intra_budget, intra_groups, is_adapter_param
from .variants import AdaLoRAOptions

CONFIG_KEY = "cola.peft_config"
INTRA_KEY = "cola.intra"
RANKS_KEY = "cola.intra_ranks"
LEGACY_DEFAULTS = {"intra": "lora", "adalora": asdict(AdaLoRAOptions())}
"""peft keys added after files and checkpoints were first written, and the value an older file without them means."""


def atomic_replace(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Writes ``path`` through ``write(file)`` on a temporary file in the same folder, then renames it into place:
    a crash mid-write leaves the previous good file, never a half-written one.

    Args:
        path: the file to (re)write; its folder is created.
        write: writes the content to the binary file object it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs and adapter files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def upgrade_state_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with names written by an older layout renamed: every submodule of ``model`` that defines
    ``upgrade_state_dict(state, prefix)`` (e.g. the dual encoder's ``tower_a.`` -> ``towers.vision.``) renames
    the keys under its own prefix."""
    for name, m in model.named_modules():
        upgrade = getattr(m, "upgrade_state_dict", None)
        if callable(upgrade):
            state = upgrade(state, prefix=f"{name}." if name else "")
    return state


def adapter_state_dict(model: nn.Module, *, extra_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Adapter tensors of ``model`` (names with a ``lora_``/``cola_``/``moka_`` component).

    Args:
        model: a model with injected adapters.
        extra_prefixes: also keep every state entry (parameters and persistent buffers, e.g. norm statistics)
            whose qualified name starts with one of these (task heads).
    """
    return {
        n: t.detach().clone()
        for n, t in model.state_dict().items()
        if is_adapter_param(n) or (extra_prefixes and n.startswith(extra_prefixes))
    }


def fill_legacy_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the :data:`LEGACY_DEFAULTS` it lacks and ``current`` has (a config written before ``intra``
    existed was ``intra=lora``)."""
    return {**{k: v for k, v in LEGACY_DEFAULTS.items() if k in current and k not in saved}, **saved}


def diff_configs(
    saved: dict[str, Any], current: dict[str, Any], *, labels: tuple[str, str] = ("saved", "current")
) -> list[str]:
    """One ``"key: saved X != current Y"`` line per dotted key whose values differ (:func:`cola.dicts.differences`;
    keys added since ``saved`` was written take their old meaning, :func:`fill_legacy_keys`)."""
    return differences(fill_legacy_keys(saved, current), current, labels=labels)


def intra_convention(model: nn.Module) -> dict[str, list]:
    """The intra variants and intra scales of ``model``'s adapter layers: ``{"intra": [...], "scaling": [...]}``
    (sorted, distinct; empty lists for a model without adapters)."""
    layers = [m for _, m in adapter_layers(model)]
    return {
        "intra": sorted({getattr(m.config, "intra", "lora") for m in layers}),
        "scaling": sorted({float(m.scaling) for m in layers if hasattr(m, "scaling")}),
    }


def check_intra_convention(meta: dict[str, str], model: nn.Module) -> None:
    """Raises ``ValueError`` naming both when a file's intra convention (``INTRA_KEY``; absent: ``lora``, scale
    not recorded) is not ``model``'s."""
    current = intra_convention(model)
    if not current["intra"]:
        return
    saved = json.loads(meta[INTRA_KEY]) if INTRA_KEY in meta else {"intra": ["lora"], "scaling": None}
    if saved["intra"] != current["intra"] or saved["scaling"] not in (None, current["scaling"]):

        def show(c: dict[str, Any]) -> str:
            one = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in (c["intra"], c["scaling"])]
            return f"peft.intra={one[0]!r} (intra scale {'not recorded' if one[1] is None else one[1]})"

        raise ValueError(
            f"adapter file was saved with {show(saved)} but the model uses {show(current)}; build the model with the "
            "file's peft.intra (and its rank and alpha) to load it"
        )


def _check_configs(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
    if saved is not None and current is not None:
        diffs = diff_configs(saved, current)
        if diffs:
            raise ValueError("adapter checkpoint was made with another peft config: " + "; ".join(diffs))


def load_adapter_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    extra_prefixes: tuple[str, ...] = (),
    saved_config: dict[str, Any] | None = None,
    current_config: dict[str, Any] | None = None,
) -> None:
    """Loads adapter weights (and the adapters' persistent buffers, e.g. PiSSA's initial factors, which re-base the
    residual through the layer's load hook), strict on adapter keys and shapes.

    Raises:
        ValueError: the configs differ (each differing field is named), keys are missing or unexpected, or a
            shape differs (typically another rank or sharing).
    """
    _check_configs(saved_config, current_config)
    state = upgrade_state_keys(model, state)
    own = {
        n: p
        for n, p in model.state_dict(keep_vars=True).items()
        if is_adapter_param(n) or (extra_prefixes and n.startswith(extra_prefixes))
    }
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"adapter state does not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); was it saved with another peft method, "
            "sharing or targets?"
        )
    for n, p in own.items():
        if state[n].shape != p.shape:
            raise ValueError(
                f"adapter tensor {n!r} has shape {tuple(state[n].shape)} in the checkpoint but {tuple(p.shape)} in "
                "the model; was it saved with another rank or sharing?"
            )
    with torch.no_grad():  # load_state_dict runs the layers' load hooks (PiSSA re-bases its residual)
        model.load_state_dict({n: state[n] for n in own}, strict=False)


def save_adapters(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    config: dict[str, Any] | None = None,
    extra_prefixes: tuple[str, ...] = (),
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes adapter (and optionally head) weights to a safetensors file atomically (temp file + rename).

    Under an adaptive intra variant (AdaLoRA) the file's metadata ``RANKS_KEY`` holds the rank budget and the rank
    of every layer, and the same JSON is written beside it as ``<stem>.ranks.json`` (``adapter.ranks.json``)."""
    from safetensors.torch import save

    meta = dict(metadata or {})
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    convention = intra_convention(model)
    if convention["intra"]:
        meta[INTRA_KEY] = json.dumps(convention)
    budget = intra_budget(intra_groups(model))
    if budget is not None:
        meta[RANKS_KEY] = json.dumps(budget, sort_keys=True)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, extra_prefixes=extra_prefixes).items()}
    out = atomic_replace(path, lambda f: f.write(save(tensors, metadata=meta)))
    if budget is not None:
        text = json.dumps(budget, indent=2, sort_keys=True) + "\n"
        atomic_replace(ranks_path(out), lambda f: f.write(text.encode()))
    return out


def ranks_path(adapter: str | os.PathLike) -> Path:
    """The readable rank budget written beside an adapter file of an adaptive intra variant: ``<stem>.ranks.json``."""
    adapter = Path(adapter)
    return adapter.with_name(f"{adapter.stem}.ranks.json")


def read_adapters(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, str]]:
    """Reads a file written by :func:`save_adapters`: (tensors, peft config or None, raw metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    config = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None
    return load_file(str(path)), config, meta


def load_adapters(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    config: dict[str, Any] | None = None,
    extra_prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """Loads a safetensors adapter file into ``model``; checks the file's intra convention is the model's and, with
    ``config`` given, that it equals the saved config."""
    state, saved, meta = read_adapters(path)
    _check_configs(saved, config)  # first: it names every differing field (rank, alpha, intra, ...)
    check_intra_convention(meta, model)  # also without a config: the layers' own intra and scale
    load_adapter_state_dict(model, state, extra_prefixes=extra_prefixes, saved_config=saved, current_config=config)
    return meta
