"""The split-keyed DataLoader plumbing shared by the audio-visual DataModules."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset

from cola.data.resumable import ResumableDataLoader, ResumableRandomSampler


class SplitDataModule(L.LightningDataModule):
    """Builds one dataset per split lazily (``dataset(split)``) and the train/val/test loaders around it.

    Subclasses set ``collate_fn`` and implement ``validate()`` and ``dataset(split)``; they define
    ``batch_size``, ``eval_batch_size``, ``num_workers``, ``val_split`` and ``test_splits``.
    """

    collate_fn: Callable | None = None

    def validate(self) -> None:
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.validate()

    def setup(self, stage: str | None = None) -> None:
        self.validate()
        if stage in (None, "fit"):
            self.dataset("train")
        if stage in (None, "fit", "validate"):
            self.dataset(self.val_split)
        if stage in (None, "test"):
            for split in self.test_splits:
                self.dataset(split)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        kwargs = dict(
            num_workers=self.num_workers, collate_fn=type(self).collate_fn, persistent_workers=self.num_workers > 0
        )
        if train:  # a stateful loader: a mid-epoch resume continues at the exact next batch
            return ResumableDataLoader(
                dataset, batch_size=self.batch_size, sampler=ResumableRandomSampler(dataset), **kwargs
            )
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, train=False) for split in self.test_splits]
