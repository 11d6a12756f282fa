"""callbacks.model_checkpoint.select_ties: on an equal score, ``earlier`` keeps the earlier checkpoint and counts
no improvement (Lightning's strict comparison; official grounding and AVS), ``later`` saves the later checkpoint and
resets the early-stopping patience (official AVE, ``>=`` at audio_visual/ave/CoLA/main_trans.py:357-359)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import callbacks as pl_callbacks

from cola import harness
from cola.callbacks.checkpoints import EarlyStopping, ModelCheckpoint
from tests.conftest import compose_cfg

BAD_TIES = r"callbacks\.model_checkpoint\.select_ties must be one of \['earlier', 'later'\], got 'both'"
# the monitored score of epochs 0, 1, ...: a tie of the best at epoch 2, then no improvement
SCORES = [0.5, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6]


class ScriptedScore(L.LightningModule):
    """One training and one validation batch per epoch; logs ``val/score`` = ``scores[epoch]`` (negated for
    ``mode='min'``)."""

    def __init__(self, scores: list[float], sign: float = 1.0) -> None:
        super().__init__()
        self.scores, self.sign = scores, sign
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.sign * self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 2)))

    def val_dataloader(self):
        return self.train_dataloader()


def run(tmp_path: Path, select_ties: str, *, mode: str = "max", patience: int = 2, **checkpoint: object):
    """Fits :class:`ScriptedScore` with the two callbacks; returns (trainer, checkpoint, early stopping)."""
    args = dict(filename="best", save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints",
        monitor="val/score",
        mode=mode,
        select_ties=select_ties,
        **{**args, **checkpoint},
    )
    stop = EarlyStopping(monitor="val/score", mode=mode, patience=patience, select_ties=select_ties)
    trainer = L.Trainer(
        max_epochs=len(SCORES),
        accelerator="cpu",
        callbacks=[ckpt, stop],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(ScriptedScore(SCORES, sign=1.0 if mode == "max" else -1.0))
    return trainer, ckpt, stop


def saved_epoch(path: str | Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(
    ("select_ties", "best_epoch", "stopped_epoch"),
    [
        # epoch 2 ties epoch 1: not an improvement, patience 2 runs out at epoch 3
        ("earlier", 1, 3),
        # epoch 2 ties epoch 1: best.ckpt written again from epoch 2, patience reset; it runs out at epoch 4
        ("later", 2, 4),
    ],
)
def test_a_tie_selects_and_resets_patience_as_select_ties_says(tmp_path, mode, select_ties, best_epoch, stopped_epoch):
    trainer, ckpt, stop = run(tmp_path, select_ties, mode=mode)
    assert Path(ckpt.best_model_path) == tmp_path / "checkpoints" / "best.ckpt"
    assert saved_epoch(ckpt.best_model_path) == best_epoch
    assert float(ckpt.best_model_score) == pytest.approx(0.7 if mode == "max" else -0.7)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt"]  # kept in place
    assert stop.stopped_epoch == stopped_epoch and trainer.current_epoch == stopped_epoch + 1
    assert float(stop.best_score) == pytest.approx(0.7 if mode == "max" else -0.7)


@pytest.mark.parametrize(("select_ties", "best_epoch"), [("earlier", 1), ("later", 2)])
def test_top_k_best_model_path_is_the_earlier_or_later_tie(tmp_path, select_ties, best_epoch):
    _, ckpt, _ = run(tmp_path, select_ties, filename="e{epoch}", save_top_k=2)
    assert Path(ckpt.best_model_path).name == f"e{best_epoch}.ckpt"
    assert {Path(p).name for p in ckpt.best_k_models} == {"e1.ckpt", "e2.ckpt"}


def test_with_later_only_a_tie_of_the_best_resets_the_patience(tmp_path):
    trainer, ckpt, stop = run(tmp_path, "later", patience=10)
    assert stop.stopped_epoch == 0 and trainer.current_epoch == len(SCORES)  # never stopped
    assert saved_epoch(ckpt.best_model_path) == 2 and stop.wait_count == len(SCORES) - 3


def test_bad_select_ties_raises_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=BAD_TIES):
        ModelCheckpoint(dirpath=tmp_path, monitor="val/score", select_ties="both")
    with pytest.raises(ValueError, match=BAD_TIES):
        EarlyStopping(monitor="val/score", select_ties="both")


def test_state_keys_and_states_are_lightnings():
    """Checkpoints written with Lightning's classes resume with these (and back): same state key, same state."""
    ckpt_args = dict(dirpath="/tmp/x", filename="best", monitor="val/score", mode="max")
    ours, theirs = ModelCheckpoint(select_ties="later", **ckpt_args), pl_callbacks.ModelCheckpoint(**ckpt_args)
    assert ours.state_key == theirs.state_key and ours.state_dict().keys() == theirs.state_dict().keys()
    stop_args = dict(monitor="val/score", mode="max", patience=3)
    ours_stop, theirs_stop = EarlyStopping(select_ties="later", **stop_args), pl_callbacks.EarlyStopping(**stop_args)
    assert ours_stop.state_key == theirs_stop.state_key
    ours_stop.wait_count, ours_stop.best_score = 2, torch.tensor(0.7)
    theirs_stop.load_state_dict(ours_stop.state_dict())
    assert theirs_stop.wait_count == 2 and float(theirs_stop.best_score) == pytest.approx(0.7)
    assert ours_stop.monitor_op is torch.gt and ours_stop.min_delta == 0  # Lightning's own comparison kept


@pytest.mark.parametrize(("experiment", "expected"), [("main_ave", "later"), ("main_refcoco", "earlier")])
def test_experiments_select_ties(experiment, expected, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", f"paths.run_dir={tmp_path}"], tiny=False)
    assert cfg.callbacks.model_checkpoint.select_ties == expected
    callbacks = harness.instantiate_callbacks(cfg)
    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    assert checkpoints[0].filename == "best" and checkpoints[0].select_ties == expected
    if experiment == "main_ave":
        (stop,) = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
        assert stop.select_ties == expected and stop.patience == 10
