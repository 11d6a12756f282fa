"""Plain-dict helpers for configs, in one place: flatten a nested config to dotted keys, list the differences of
two configs, and the one "must be one of" check.

Used by the resume check (:mod:`cola.runio`), the peft-config check of adapter files and task checkpoints
(:func:`cola.peft.state.diff_configs`), the CLI's key hints (:mod:`cola.cli`), run comparison (:mod:`cola.compare`)
and every option check (:func:`check_choice`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["MISSING", "check_choice", "differences", "dotted_keys", "flatten"]

MISSING = "<missing>"
T = TypeVar("T")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}``: dotted keys of the leaves (lists and empty mappings
    are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dotted_keys(d: Mapping[str, Any]) -> list[str]:
    """Every dotted key of ``d``: its leaves and the nodes above them (``{"a": {"b": 1}}`` -> ``["a", "a.b"]``)."""
    keys: set[str] = set()
    for leaf in flatten(d):
        parts = leaf.split(".")
        keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(keys)


def differences(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    allowed: Iterable[str] = (),
    labels: tuple[str, str] = ("run", "now"),
) -> list[str]:
    """``"key: <labels[0]> X != <labels[1]> Y"`` for every dotted key whose value differs between the nested
    configs ``a`` and ``b`` (a key one of them lacks reads :data:`MISSING`), sorted by key, leaving out the keys
    ``allowed`` names: ``"paths."`` allows every key under ``paths``, ``"data.root"`` that key (and below it)."""
    allowed = tuple(allowed)
    exact = {p.rstrip(".") for p in allowed}
    prefixes = tuple(p if p.endswith(".") else p + "." for p in allowed)
    fa, fb = flatten(a), flatten(b)
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k in exact or k.startswith(prefixes):
            continue
        x, y = fa.get(k, MISSING), fb.get(k, MISSING)
        if x != y:
            out.append(f"{k}: {labels[0]} {x!r} != {labels[1]} {y!r}")
    return out


def check_choice(key: str, value: T, choices: Iterable[Any]) -> T:
    """``value`` when it is one of ``choices``; else raises ``ValueError`` naming ``key``, ``value`` and the
    ``choices`` (in the order given: pass them sorted where the message should list them sorted)."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")
    return value
