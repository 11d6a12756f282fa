"""A shuffling sampler and a DataLoader that resume an interrupted epoch at its exact next batch.

Lightning (2.x) saves ``state_dict()`` of every training DataLoader that has ``state_dict``/``load_state_dict``
(``fit_loop`` -> ``CombinedLoader._state_dicts``) in each checkpoint and hands it back through
``load_state_dict`` when it builds the loader of a resumed run (a loader built before the checkpoint is loaded,
as ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` does, gets it from
:class:`cola.callbacks.resume.ResumeState`). A plain DataLoader has no such state, so a run resumed
mid-epoch would start that epoch's shuffle from the beginning and see other samples than an uninterrupted run.
Here:

- :class:`ResumableRandomSampler` draws epoch ``e``'s order from ``seed + e`` alone (a
  :class:`~torch.utils.data.DistributedSampler`, so one process or several share the same code and Lightning does
  not wrap it again under DDP), and can start an epoch at any position;
- :class:`ResumableDataLoader` counts the batches it has handed to the training loop (not the indices its
  workers have prefetched) and saves ``{"epoch", "num_yielded", ...}``; after ``load_state_dict`` its next
  iteration skips the samples already consumed when it runs the same epoch again, and starts a full epoch
  otherwise (a checkpoint written at the end of an epoch resumes with the next one).

Random augmentation is drawn per sample: the loader hands ``(seed, epoch, index)`` keys to a
:class:`SeededSamples` view of the dataset, which loads each sample under torch's CPU generator seeded from ``(seed, epoch, index)``
alone (and restores the generator after it). A sample's crop, flip or colour jitter therefore does not depend on
which worker process loads it, on how many samples that worker loaded before, or on where an epoch was resumed:
with ``num_workers > 0`` (persistent workers, which a resume starts afresh) and with ``num_workers = 0`` the
resumed epoch gets exactly the batches, augmentations included, of the uninterrupted run. Worker processes get
their base seed from the loader's own generator, seeded per epoch, so creating an iterator never consumes the
global RNG (a resumed run would otherwise draw one number more than the original); the global RNG state stored in
the checkpoint (:class:`cola.callbacks.resume.ResumeState`) keeps dropout exact.

Why not torchdata's ``StatefulDataLoader``: Lightning checkpoints its state the same way as this loader's, so it
would not remove the two private calls :class:`~cola.callbacks.resume.ResumeState` makes (handing the state to a
loader built before the checkpoint is loaded, and rewinding a batch in flight when SLURM's handler saves). It has
not been tried against tests/harness/test_resume.py (exact mid-epoch and SIGKILL resume) and is not a dependency.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)

__all__ = ["ResumableDataLoader", "ResumableRandomSampler", "SeededSamples", "rewind_in_flight_batch", "sample_seed"]

# the loader's worker-seed generator uses seed + epoch + this offset, a stream apart from the permutation's
_WORKER_SEED_OFFSET = 1 << 32


def _default_seed() -> int:
    # what lightning.seed_everything(seed) exports; Lightning's own distributed sampler reads it the same way
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _consumed(state: dict[str, Any]) -> int:
    return min(state["start"] + state["batches"] * state["batch_size"], state["num_samples"])


def rewind_in_flight_batch(state: dict[str, Any]) -> dict[str, Any]:
    """A :class:`ResumableDataLoader` state as it was before its last batch.

    A checkpoint written while that batch was still being processed (Lightning's SLURM handler saves from inside
    a signal handler) must hand the batch out again, as the training loop runs it again. Other states (of other
    loaders) are returned unchanged.
    """
    if not {"start", "batches", "batch_size", "num_samples"} <= set(state) or state["batches"] == 0:
        return state
    rewound = {**state, "batches": state["batches"] - 1}
    rewound["num_yielded"] = _consumed(rewound)
    return rewound


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws: a 63-bit hash of ``(seed, epoch, index)`` (neighbouring keys get
    unrelated seeds, unlike ``seed + epoch + index``)."""
    digest = hashlib.blake2b(f"{int(seed)}/{int(epoch)}/{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededSamples(Dataset):
    """``dataset`` read by ``(seed, epoch, index)`` keys, each sample loaded under torch's CPU generator seeded
    with :func:`sample_seed` of the key; the generator's state is restored afterwards.

    A plain integer key reads ``dataset[key]`` with no seeding (the caller's generator as it is). Attributes the
    view lacks are the dataset's (``loader.dataset.rows`` etc.).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        seed, epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableRandomSampler(DistributedSampler):
    """Shuffles ``dataset`` per epoch from ``seed + epoch`` and can start an epoch part-way through.

    Args:
        dataset: a sized dataset.
        seed: base seed (``None``: the ``seed_everything`` seed, ``PL_GLOBAL_SEED``, else 0).
        num_replicas: processes sharing the data (``None``: the process group's size, else 1).
        rank: this process's rank (``None``: the process group's rank, else 0).
        drop_last: drop the tail so every process gets the same number of samples without padding.

    ``state_dict()`` holds the epoch, the seed and ``num_yielded``, the number of this process's indices already
    handed out in the epoch. After ``load_state_dict``, the next ``__iter__`` of the same epoch starts at that
    position; :meth:`set_epoch` to another epoch discards it. With ``keyed`` set (as :class:`ResumableDataLoader`
    does) it yields ``(seed, epoch, index)`` triples, the keys of :class:`SeededSamples`.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=_default_seed() if seed is None else int(seed),
            drop_last=drop_last,
        )
        self.num_yielded = 0  # indices handed out in the current iteration (offset included)
        self.start = 0  # where the current iteration started
        self._resume: tuple[int, int] | None = None  # (epoch, offset) from load_state_dict
        self.keyed = False  # True: yield (seed, epoch, index) keys for SeededSamples (set by ResumableDataLoader)

    def __iter__(self) -> Iterator[int | tuple[int, int, int]]:
        indices = list(super().__iter__())  # this rank's share of epoch `self.epoch`, padded like DistributedSampler
        start = 0
        if self._resume is not None:
            epoch, offset = self._resume
            self._resume = None
            if epoch == self.epoch:
                start = min(offset, len(indices))
        self.start = self.num_yielded = start
        epoch = int(self.epoch)
        for i in indices[start:]:
            self.num_yielded += 1
            yield (int(self.seed), epoch, i) if self.keyed else i

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": int(self.epoch),
            "seed": int(self.seed),
            "num_yielded": int(self.num_yielded),
            "num_replicas": int(self.num_replicas),
            "num_samples": int(self.num_samples),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at ``state["num_yielded"]`` when the next iteration runs epoch ``state["epoch"]``.

        Raises:
            ValueError: ``state`` lacks a key.
        """
        missing = [k for k in ("epoch", "seed", "num_yielded") if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks {missing}; got keys {sorted(state)}")
        if int(state["seed"]) != self.seed:
            log.warning(
                "resuming with seed %d, but the interrupted run shuffled with seed %d: its order is kept for the "
                "interrupted epoch and later epochs",
                self.seed,
                state["seed"],
            )
            self.seed = int(state["seed"])
        if int(state.get("num_replicas", self.num_replicas)) != self.num_replicas:
            log.warning(
                "the interrupted run used %s processes, this one %d: the interrupted epoch restarts from its beginning",
                state.get("num_replicas"),
                self.num_replicas,
            )
            self.epoch, self.num_yielded = int(state["epoch"]), 0
            return
        self.epoch = int(state["epoch"])
        self.num_yielded = int(state["num_yielded"])
        self._resume = (self.epoch, self.num_yielded)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableRandomSampler` whose state Lightning checkpoints.

    Takes the arguments of :class:`~torch.utils.data.DataLoader`; ``sampler`` must be a
    :class:`ResumableRandomSampler` (``shuffle`` must not be set). The dataset is served through
    :class:`SeededSamples` (``loader.dataset``; the original is ``loader.dataset.dataset``), so every sample's
    random draws come from ``(seed, epoch, index)``. Its ``state_dict()`` is the sampler's state
    with ``num_yielded`` counted from the batches this loader returned, which stays exact when worker processes
    prefetch indices ahead of the training loop.
    """

    def __init__(self, dataset: Any, *args: Any, sampler: ResumableRandomSampler | None = None, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableRandomSampler):
            raise TypeError(
                f"ResumableDataLoader needs sampler=ResumableRandomSampler(...), got {type(sampler).__name__}"
            )
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        sampler.keyed = True
        if not isinstance(dataset, SeededSamples):
            dataset = SeededSamples(dataset)
        super().__init__(dataset, *args, sampler=sampler, **kwargs)
        self._batches = 0  # batches returned by the current iteration
        self._iter_epoch: int | None = None  # the epoch the current iteration runs

    def __iter__(self) -> Iterator[Any]:
        # a generator: this body (the sampler's permutation, the workers' seeds) runs at the first next(), i.e.
        # after Lightning's set_epoch(), also for the iterator it creates before a resumed epoch begins
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        self.generator.manual_seed(sampler.seed + sampler.epoch + _WORKER_SEED_OFFSET)
        self._batches, self._iter_epoch = 0, sampler.epoch
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        state = sampler.state_dict()
        started = self._iter_epoch == sampler.epoch  # else set_epoch() ran and the epoch's first batch has not
        state.update(
            start=sampler.start if started else 0,
            batches=self._batches if started else 0,
            batch_size=int(self.batch_size or 1),
        )
        state["num_yielded"] = _consumed(state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        sampler.load_state_dict(state)
        sampler.start = sampler.num_yielded if sampler._resume is not None else 0
        self._batches, self._iter_epoch = 0, sampler.epoch
        if sampler.num_yielded >= len(sampler):
            log.info("training data: epoch %d was complete, resuming with the next one", sampler.epoch)
        else:
            log.info(
                "training data resumes epoch %d after %d of %d samples",
                sampler.epoch,
                sampler.num_yielded,
                len(sampler),
            )
