"""MUSIC-AVQA answer accuracy (docs/metrics.md, docs/data.md#music-avqa): overall, per modality and per question type.

Keys (:data:`AVQA_KEYS`): ``acc`` (correct answers / questions), ``acc_audio``, ``acc_visual``,
``acc_audiovisual`` (correct / questions of that modality) and ``acc_<modality>_<type>`` for the nine types of
:data:`cola.avqa_types.QUESTION_TYPES` (``acc_audio_counting``, ..., ``acc_audiovisual_temporal``).

Averaging follows the official evaluation (GeWu-Lab/MUSIC-AVQA, ``net_grd_avst/main_avst.py``, ``test``): every
number is a micro average over questions, the modality accuracies included (``(sum(A_count) + sum(A_cmp)) /
(len(A_count) + len(A_cmp))``, not the mean of the type accuracies), and the overall accuracy is
``correct / total``. The state is one (correct, total) count per question type, summed over batches and
processes, so the result does not depend on batching.

A subset without any question (a question type, or a whole modality, that a split does not hold; the official
script divides by zero there) is **absent**: its key is left out, never NaN, so ``metrics.json`` stays valid JSON.
:meth:`AVQAAccuracy.compute_all` omits such keys and the AVQA task leaves their ``<split>/<key>`` out of what it
logs (:func:`absent_keys`), with one ``logging.warning`` per split naming the types. Only :meth:`AVQAAccuracy.compute`
of an empty subset, which must return a tensor, still gives NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torchmetrics import Metric

from cola.avqa_types import MODALITIES, NUM_TYPES, QUESTION_TYPES, TYPE_KEYS
from cola.dicts import check_choice

log = logging.getLogger(__name__)

__all__ = ["AVQA_KEYS", "AVQAAccuracy", "absent_keys", "avqa_metrics", "warn_absent"]

_SUBSETS: dict[str, list[int]] = {
    "acc": list(range(NUM_TYPES)),
    **{
        f"acc_{name}": [i for i, (m, _) in enumerate(QUESTION_TYPES) if m == release]
        for release, name in MODALITIES.items()
    },
    **{f"acc_{key}": [i] for i, key in enumerate(TYPE_KEYS)},
}
AVQA_KEYS: tuple[str, ...] = tuple(_SUBSETS)  # acc, acc_audio, acc_visual, acc_audiovisual, acc_audio_counting, ...


class AVQAAccuracy(Metric):
    """Answer accuracy over the questions of one subset (``key``; see the module docstring).

    ``update(preds, target, question_type)``: ``preds`` (B, A) answer scores (argmax taken) or (B,) answer
    indices, ``target`` (B,) answer indices (a negative index, an answer outside the vocabulary, is never
    correct), ``question_type`` (B,) indices into ``QUESTION_TYPES``. ``compute()`` returns the 0-dim accuracy of
    ``key``; :meth:`compute_all` every key of :data:`AVQA_KEYS` from the same counts.

    Args:
        key: one of :data:`AVQA_KEYS` (default ``acc``).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, key: str = "acc", **kwargs) -> None:
        super().__init__(**kwargs)
        check_choice("AVQAAccuracy key", key, AVQA_KEYS)
        self.key = key
        self.add_state("correct", default=torch.zeros(NUM_TYPES, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(NUM_TYPES, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, question_type: torch.Tensor) -> None:  # type: ignore[override]
        """Adds a batch (see the class docstring)."""
        if preds.ndim == 2:
            preds = preds.detach().argmax(dim=-1)  # (B,)
        if preds.ndim != 1 or target.shape != preds.shape or question_type.shape != preds.shape:
            raise ValueError(
                "AVQAAccuracy expects preds (B, A) or (B,), target (B,) and question_type (B,), got preds "
                f"{tuple(preds.shape)}, target {tuple(target.shape)}, question_type {tuple(question_type.shape)}"
            )
        if question_type.numel() and (question_type.min() < 0 or question_type.max() >= NUM_TYPES):
            raise ValueError(f"question_type must be in [0, {NUM_TYPES}), got values {question_type.unique().tolist()}")
        qtype = question_type.to(self.total.device).long()
        hit = (preds.to(target.device) == target) & (target >= 0)  # (B,)
        self.correct += torch.bincount(qtype, weights=hit.to(self.total.device, torch.float64), minlength=NUM_TYPES)
        self.total += torch.bincount(qtype, minlength=NUM_TYPES).to(torch.float64)

    def _ratio(self, key: str) -> torch.Tensor:
        idx = _SUBSETS[key]
        total = self.total[idx].sum()
        if total == 0:
            return torch.tensor(float("nan"), dtype=torch.float32, device=self.total.device)
        return (self.correct[idx].sum() / total).float()

    def num_questions(self, key: str | None = None) -> int:
        """Questions counted so far in the subset of ``key`` (default: this metric's own key)."""
        return int(self.total[_SUBSETS[self.key if key is None else key]].sum())

    def compute(self) -> torch.Tensor:
        """The 0-dim accuracy of ``key`` (NaN when its subset holds no question: see :func:`absent_keys`)."""
        return self._ratio(self.key)

    def compute_all(self, where: str = "") -> dict[str, torch.Tensor]:
        """Every key of :data:`AVQA_KEYS` whose subset holds a question (0-dim tensors); the others are left out,
        with one warning naming them (``where``, e.g. the split, starts it)."""
        absent = [key for key in AVQA_KEYS if self.num_questions(key) == 0]
        warn_absent(absent, where)
        return {key: self._ratio(key) for key in AVQA_KEYS if key not in absent}


def _subset_name(key: str) -> str:
    """The question type (``audiovisual_temporal``) or modality (``visual (modality)``) a key averages over."""
    if key == "acc":
        return "any type"
    return key[4:] if key[4:] in TYPE_KEYS else f"{key[4:]} (modality)"


def warn_absent(keys: Iterable[str], where: str = "") -> None:
    """One ``logging.warning`` naming the question types (or modalities) of the absent ``keys`` (none: nothing)."""
    keys = list(keys)
    if keys:
        log.warning(
            "MUSIC-AVQA%s: no question of type(s) %s; %s left out of the metrics (absent, not NaN)",
            f" {where}" if where else "",
            ", ".join(_subset_name(k) for k in keys),
            ", ".join(keys),
        )


def absent_keys(metrics: Mapping[str, Metric], where: str = "") -> list[str]:
    """The names of the :class:`AVQAAccuracy` among ``metrics`` that were updated but hold no question of their
    subset (a question type the split does not have): the keys to leave out rather than log as NaN. Warns once,
    naming their types (``where``, e.g. the split, starts the message).

    Metrics never updated (an unreadable split) and other metric classes are not included. The test is on
    :meth:`AVQAAccuracy.compute` (NaN exactly when the subset is empty), which reduces the counts over processes
    first: every process leaves out the same keys, and the value is cached for the caller's own ``compute()``.
    """
    absent = [
        name
        for name, metric in metrics.items()
        if isinstance(metric, AVQAAccuracy) and metric.update_count > 0 and bool(torch.isnan(metric.compute()))
    ]
    warn_absent(absent, where)
    return absent


def avqa_metrics(keys: tuple[str, ...] = AVQA_KEYS) -> dict[str, AVQAAccuracy]:
    """One :class:`AVQAAccuracy` per key (what the AVQA task logs as ``<split>/<key>``)."""
    return {key: AVQAAccuracy(key) for key in keys}
