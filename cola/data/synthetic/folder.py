"""Atomic writing of a generated dataset folder, shared by the synthetic sets.

Everything is written into a temporary sibling of the final folder that is renamed to it at the end, so a
reader (or a second DDP rank) never sees a half-written set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "synthetic.json"  # parameters and contents of a synthetic set, written at its root


@contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """Yields a fresh temporary sibling of ``root`` (removed on exit unless :func:`publish` moved it).

    Args:
        root: the folder the set will be published to; its parent is created.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset folder should look like any other
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, root: Path) -> None:
    """Renames the finished ``tmp`` to ``root``, replacing an existing ``root`` (moved aside, then deleted)."""
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, root)


def keep_existing(root: Path, params: dict[str, Any], *, what: str, overwrite: bool) -> bool:
    """Whether ``root`` already holds this generator's output with ``params`` (then it is kept as is).

    Args:
        root: the dataset folder.
        params: the generator's parameters, as recorded under ``params`` in its manifest.
        what: the set's name for messages, e.g. ``"AVSBench"``.
        overwrite: replace whatever is there (always False then).

    Raises:
        FileExistsError: ``root`` exists, holds something else and ``overwrite`` is false.
    """
    if overwrite or not root.exists():
        return False
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("params") == params:
        log.info("%s already holds the synthetic %s set with %s; kept", root, what, params)
        return True
    raise FileExistsError(
        f"{root} already exists and is not a synthetic {what} set with {params}; "
        "pass overwrite=True (--overwrite) to replace it"
    )
