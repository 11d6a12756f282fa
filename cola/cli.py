"""One error style for the command line: every configuration error is one paragraph, exit code 2, no traceback.

Hydra reports its own errors (an unknown key, a group option that does not exist, a malformed override) with a
multi-line message and exit code 1 before any of this repo's code runs. :func:`precheck` composes the command
line first, as Hydra will, and turns those errors into the repo's style; :func:`fail` prints a
:class:`~cola.validation.SetupError` the same way; :func:`remove_if_empty` drops the run folder Hydra created for
a run that stopped before writing anything.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from cola.dicts import dotted_keys

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    """Prints ``error: message`` as one paragraph on stderr and exits with ``code``."""
    text = " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())
    print(f"\nerror: {text}\n(set COLA_TRACEBACK=1 for the traceback)", file=sys.stderr)
    sys.exit(code)


def remove_if_empty(run_dir: Path) -> None:
    """Removes ``run_dir`` when a run stopped before writing anything into it (Hydra creates it up front), and its
    ``runs/`` (``evals/``) and task folders if that left them empty."""
    run_dir = Path(run_dir)
    try:
        run_dir.rmdir()  # only succeeds on an empty folder
        if run_dir.parent.name in ("runs", "evals"):  # outputs/<task>/runs/<ts>: the layout Hydra made for it
            run_dir.parent.rmdir()
            run_dir.parent.parent.rmdir()
    except OSError:
        pass


def _explain(error: Exception, config_keys: list[str]) -> str:
    """Hydra's message, flattened to one paragraph, with the closest keys for an unknown one."""
    text = str(error)
    missing = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    options = re.search(r"Could not find '([^'/]+)/([^']+)'.*?Available options in '[^']+':(.*)", text, re.S)
    if options:
        listed = re.split(r"\n\s*\n|Config search path", options.group(3))[0]  # Hydra appends its search path
        group, value, choices = options.group(1), options.group(2), listed.split()
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={value}: no such option{hint}; choices: {', '.join(choices)}"
    if missing and ("not in struct" in text or "To append to your config" in text):
        key = missing.group(1)
        close = difflib.get_close_matches(key, config_keys, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{key}: no such key in the config{hint} (to add a new key on purpose, write +{key}=VALUE)"
    return text


def precheck(config_name: str, args: list[str]) -> None:
    """Composes ``configs/<config_name>.yaml`` with the command line's overrides (the first value of each sweep)
    and exits with one paragraph on any Hydra error. Hydra's own flags (``-m``, ``--cfg``, ``--help`` ...) are left
    to Hydra; a run with ``--config-dir``/``-cn`` is not prechecked."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # Hydra's own flags (--cfg job, --info, -cn NAME, --help ...): Hydra parses and reports those
    if os.environ.get("COLA_TRACEBACK"):
        return
    overrides = [a for a in args if not a.startswith("-")]
    if not overrides:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        fail(f"cannot read the command line: {e}")
    single = []
    for o in parsed:
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            single.append(f"{o.get_key_element()}={first}")
        else:
            single.append(o.input_line)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            try:
                compose(config_name=config_name, overrides=single, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as e:
                base = compose(config_name=config_name, overrides=[], return_hydra_config=False)
                keys = dotted_keys(OmegaConf.to_container(base, resolve=False))
                fail(_explain(e, keys))
    finally:
        GlobalHydra.instance().clear()
