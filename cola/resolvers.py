"""Hydra/OmegaConf plumbing shared by train.py, eval.py and the tests.

- ``${cola.minilm:}``: the folder of the pip-shipped MiniLM BERT (the tiny model's text tower and tokenizer).
- ``${cola.audio_frames:AUDIO_INPUT,TARGET_FRAMES}``: the AST ``max_length`` of a data setting
  (:func:`cola.data.audio.audio_frames`): 1024 with ``pad`` (the pretrained grid), ``TARGET_FRAMES`` with
  ``interpolate``; ``configs/model/*.yaml`` pass ``data.audio_input`` and ``data.audio_target_frames``.
- :func:`quote_numeric_group_overrides`: Hydra parses ``rank=8`` as the integer 8 and refuses integers as
  config-group options; the entry points quote them (``rank='8'``, sweeps ``rank='4','8'``) so
  ``configs/rank/8.yaml`` is selected as the user typed it.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

NUMERIC_GROUPS = ("rank",)
_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2}|~)(?P<group>" + "|".join(NUMERIC_GROUPS) + r")=(?P<value>[0-9][0-9, ]*)$")


def _minilm() -> str:
    from cola.models.encoders import minilm_path

    return minilm_path()


def _audio_frames(audio_input: str, target_frames: int) -> int:
    from cola.data.audio import audio_frames

    return audio_frames(str(audio_input), int(target_frames))


def register() -> None:
    """Registers the resolvers (idempotent)."""
    if not OmegaConf.has_resolver("cola.minilm"):
        OmegaConf.register_new_resolver("cola.minilm", _minilm, use_cache=True)
    if not OmegaConf.has_resolver("cola.audio_frames"):
        OmegaConf.register_new_resolver("cola.audio_frames", _audio_frames)


def quote_numeric_group_overrides(args: list[str]) -> list[str]:
    """``rank=8`` -> ``rank='8'`` and ``rank=4,8`` -> ``rank='4','8'``; other arguments are unchanged."""
    out = []
    for arg in args:
        m = _OVERRIDE.match(arg)
        if m:
            values = ",".join(f"'{v.strip()}'" for v in m["value"].split(",") if v.strip())
            arg = f"{m['prefix']}{m['group']}={values}"
        out.append(arg)
    return out


register()
