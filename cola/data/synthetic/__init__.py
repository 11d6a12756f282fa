"""Synthetic datasets in the exact layouts of the real releases, for the demo, CPU runs and tests.

Each generator takes the dataset folder and plain keyword arguments, is deterministic for a seed and writes
atomically (:mod:`cola.data.synthetic.folder`); ``task.synthetic.builder`` in ``configs/task/*.yaml`` names the
one ``train.py`` calls when ``data.root`` is null. Command lines: ``scripts/make_synthetic_*.py``.
"""

from cola.data.synthetic.ave import build_synthetic_ave, make_synthetic_ave
from cola.data.synthetic.avqa import build_synthetic_avqa, make_synthetic_avqa
from cola.data.synthetic.avs import make_synthetic_avs
from cola.data.synthetic.refcoco import make_synthetic_refcoco

__all__ = [
    "build_synthetic_ave",
    "build_synthetic_avqa",
    "make_synthetic_ave",
    "make_synthetic_avqa",
    "make_synthetic_avs",
    "make_synthetic_refcoco",
]
