"""The DataModule contract: everything the harness (:mod:`cola.harness`) may call on a dataset, in one base class.

Every DataModule of this package derives from :class:`CoLADataModule`; adding a dataset = one subclass that
implements :meth:`~CoLADataModule.validate` and :meth:`~CoLADataModule.build_dataset` (and, when it has them,
:meth:`~CoLADataModule.split_floor_metrics`) + one ``configs/task/<name>.yaml``. What the harness uses:

- :meth:`validate`: checks the data on disk before any long work (called before the towers are built);
- :attr:`val_split`, :attr:`test_splits`: the split of the validation loader and those of the test loaders,
  also the metric key prefixes (``val/acc``, ``testA/acc@0.5``);
- :meth:`floor_metrics`: scores of trivial predictors on the evaluated splits, the floors a model must clear;
- :attr:`num_skipped`: samples skipped at load time because a file could not be decoded.

The loaders are built here too: a resumable shuffled loader for training (a mid-epoch resume continues at the
exact next batch) and plain ordered loaders for evaluation. A dataset's ``__getitem__`` may return ``None`` for
an unreadable sample (the collate function drops it) and records it in its ``skipped`` dict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, default_collate

from cola.data.resumable import ResumableDataLoader, ResumableRandomSampler

__all__ = ["CoLADataModule", "check_int"]


def check_int(key: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` when it is an integer >= ``minimum`` (or ``None`` with ``optional``).

    Raises:
        ValueError: naming ``data.<key>``, the rule and the value.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"data.{key} must be {rule}{' or null' if optional else ''}, got {value!r}")
    return value


class CoLADataModule(L.LightningDataModule, ABC):
    """Base of every DataModule: the harness contract, split bookkeeping and the train/val/test loaders.

    Subclasses set in ``__init__`` (before anything else uses them): ``batch_size``, ``eval_batch_size``,
    ``num_workers``, ``val_split``, ``test_splits`` (and ``train_split`` when it is not ``train``); they implement
    :meth:`validate` and :meth:`build_dataset`, and :meth:`collate` when batches need more than
    ``torch.utils.data.default_collate``.

    Attributes:
        train_split: the split of the training loader.
        val_split: the split of the validation loader (model selection).
        test_splits: the splits of the test loaders, in order.
        pin_memory: the loaders' ``pin_memory``.
    """

    train_split: str = "train"
    val_split: str
    test_splits: list[str]
    batch_size: int
    eval_batch_size: int
    num_workers: int
    limit_per_split: int | None = None
    pin_memory: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._datasets: dict[tuple[str, bool], Dataset] = {}

    def set_loader_args(
        self, *, batch_size: int, eval_batch_size: int | None, num_workers: int, limit_per_split: int | None
    ) -> None:
        """Checks and stores the loader settings every DataModule takes (``eval_batch_size`` None: ``batch_size``).

        Raises:
            ValueError: a value of the wrong type or range (naming the ``data.*`` key and the value).
        """
        self.batch_size = check_int("batch_size", batch_size)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, optional=True) or self.batch_size
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.limit_per_split = check_int("limit_per_split", limit_per_split, optional=True)

    # ------------------------------------------------------------------------------------------- contract
    @abstractmethod
    def validate(self) -> None:
        """Checks the data on disk (layout, annotation files) and indexes it; cached, cheap when called again.

        Raises:
            FileNotFoundError: a file or folder is missing (the message lists the expected paths).
            ValueError: a file is malformed or a split is empty (the message names the file and the problem).
        """

    @abstractmethod
    def build_dataset(self, split: str, *, train: bool) -> Dataset:
        """A new dataset over ``split``; ``train`` selects the training transform (augmentation)."""

    def collate(self) -> Callable[[list], Any]:
        """The loaders' ``collate_fn`` (a module-level function: workers pickle it, not this DataModule);
        default: torch's ``default_collate``."""
        return default_collate

    def split_floor_metrics(self, split: str) -> dict[str, float]:
        """The floors of one evaluated split, ``{"<split>/<metric>_<floor>": value}``; none by default."""
        return {}

    def floor_metrics(self) -> dict[str, float]:
        """Scores of trivial predictors (e.g. a fixed box, the majority class) on every split of
        :attr:`eval_splits`: the floors a model must clear. Reads annotations, never runs a model."""
        self.validate()
        out: dict[str, float] = {}
        for split in self.eval_splits:
            out.update(self.split_floor_metrics(split))
        return out

    @property
    def num_skipped(self) -> int:
        """Distinct samples skipped at load time because a file could not be decoded (counted in this process).

        A sample counts once however many passes (validation every epoch, the final validation and test, a
        validation split that is also a test split) skipped it.
        """
        return len({(split, key) for (split, _), d in self._datasets.items() for key in getattr(d, "skipped", {})})

    @property
    def eval_splits(self) -> list[str]:
        """The distinct splits evaluated (floors included), the validation split first."""
        return list(dict.fromkeys([self.val_split, *self.test_splits]))

    # ------------------------------------------------------------------------------------------- datasets
    def dataset(self, split: str, *, train: bool | None = None) -> Dataset:
        """The dataset of ``split``, built on first use (after :meth:`validate`) and cached.

        Args:
            split: the split name.
            train: whether it carries the training transform; default: ``split == train_split``.
        """
        train = split == self.train_split if train is None else train
        if (split, train) not in self._datasets:
            self.validate()
            self._datasets[(split, train)] = self.build_dataset(split, train=train)
        return self._datasets[(split, train)]

    def built(self, split: str) -> list[Dataset]:
        """The datasets of ``split`` built so far (training and evaluation ones)."""
        return [d for (s, _), d in self._datasets.items() if s == split]

    @property
    def train_dataset(self) -> Dataset:
        """The training dataset (with the training transform)."""
        return self.dataset(self.train_split, train=True)

    @property
    def val_dataset(self) -> Dataset:
        """The dataset of the validation loader."""
        return self.dataset(self.val_split, train=False)

    @property
    def test_datasets(self) -> list[Dataset]:
        """The datasets of the test loaders, in :attr:`test_splits` order."""
        return [self.dataset(s, train=False) for s in self.test_splits]

    # ------------------------------------------------------------------------------------------ lightning
    def prepare_data(self) -> None:
        self.validate()

    def setup(self, stage: str | None = None) -> None:
        """Validates, then builds the datasets of ``stage`` (``None``: all)."""
        self.validate()
        if stage in (None, "fit"):
            self.train_dataset  # noqa: B018 (built and cached)
        if stage in (None, "fit", "validate"):
            self.val_dataset  # noqa: B018
        if stage in (None, "test"):
            self.test_datasets  # noqa: B018

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        kwargs = dict(
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if train:  # shuffled per epoch from the seed; a mid-epoch resume continues at the exact next batch
            return ResumableDataLoader(
                dataset, batch_size=self.batch_size, sampler=ResumableRandomSampler(dataset), **kwargs
            )
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per split of :attr:`test_splits`, in that order."""
        return [self._loader(d, train=False) for d in self.test_datasets]
