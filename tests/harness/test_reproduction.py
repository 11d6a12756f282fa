"""Every paper experiment resolves to the official settings of docs/official_settings.md
(cola.reproduction), and the card's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cola.reproduction import (
    BEYOND_PAPER,
    compose,
    experiment_card,
    experiment_configs,
    family_of,
    mismatches,
    settings_table,
)
from tests.conftest import CONFIG_DIR

ALL_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
EXPERIMENTS = [e for e in ALL_EXPERIMENTS if e not in BEYOND_PAPER]  # the paper's tasks: official settings to match


@pytest.mark.parametrize("experiment", BEYOND_PAPER)
def test_experiments_beyond_the_paper_have_no_official_settings(experiment):
    """main_avqa / ablation_streams run a task the paper does not (three towers): they compose, and asking for their
    official settings is an error naming the tasks that have them."""
    cfg = compose([f"experiment={experiment}", "peft=cola"])
    assert list(cfg.task.streams) == ["vision", "audio", "text"]
    with pytest.raises(ValueError, match="has no official settings"):
        family_of(str(cfg.task.name))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_resolves_to_the_official_settings(experiment):
    table = settings_table(experiment_configs(experiment))
    assert not mismatches(table), {k: table[k] for k in mismatches(table)}
    # the deliberate differences (docs/official_settings.md) are the only rows that differ, and each names its reason
    assert all(
        row["match"] or row["note"].startswith("docs/official_settings.md#deliberate-differences")
        for row in table.values()
    )


@pytest.mark.parametrize("experiment", ["main_refcoco", "main_ave", "main_avs_ms3"])
def test_no_demo_default_leaks(experiment):
    """The demo's optimisation (AdamW wd 0.01, 5 % warm-up, cosine per step, clipping 1.0) is gone, for every
    method of the sweep."""
    for method in ("frozen", "lora", "lora_param_matched", "moka", "cola"):
        cfg = compose([f"experiment={experiment}", f"peft={method}"])
        assert cfg.optim.warmup_ratio == 0.0 and cfg.optim.schedule != "cosine"
        assert cfg.trainer.gradient_clip_val is None
        assert cfg.optim.weight_decay in (0.0, 1e-4)


def test_avs_lora_alpha_84_only_for_rank_matched_lora():
    cfgs = {m: compose(["experiment=main_avs_s4", f"peft={m}"]) for m in ("lora", "cola", "moka", "lora_param_matched")}
    assert cfgs["lora"].peft.alpha == 84 and cfgs["lora"].peft.rank == 16
    assert cfgs["cola"].peft.alpha == 8 and cfgs["moka"].peft.alpha == 8 and cfgs["lora_param_matched"].peft.alpha == 8
    assert compose(["experiment=main_ave", "peft=lora"]).peft.alpha == 8
    assert compose(["peft=lora"]).peft.alpha == 8  # outside the AVS experiments


def test_a_leaked_default_is_reported():
    cfgs = experiment_configs("main_refcoco", ["optim.warmup_ratio=0.05", "trainer.gradient_clip_val=1.0"])
    assert set(mismatches(settings_table(cfgs))) == {"warm-up", "gradient clipping"}


def test_avs_card_parameters_at_real_shapes():
    """Per-stream reduction (hypernets 768 -> 48 in vision layers, 768 -> 96 in audio layers) puts CoLA back at
    ~4x LoRA's adapter parameters (it was ~12x with 768 -> 384), and the param-matched LoRA rank follows."""
    card = experiment_card("main_avs_s4")
    adapters = card["adapter_params"]
    # LoRA r 16, per block: qkv (3 A slices + B), proj, fc1, fc2 (ViT); the same widths in AST's six layers
    assert adapters["lora"] == 2 * 12 * 16 * ((3 * 768 + 2304) + (768 + 768) + 2 * (768 + 3072))
    hyper = {h: 768 * h + h + 2 * h + h * 256 + 256 + 2 * 256 for h in (48, 96)}  # fc1, norm1, fc2, norm2
    per_block_hypernets = 6 * hyper[48] + 6 * hyper[96]  # vision: q, k, v, proj, fc1, fc2; audio: 6 layers
    assert adapters["cola"] == 2 * adapters["lora"] + 12 * per_block_hypernets + 12 * 12  # + 12 lambdas per pair
    assert 3.5 < adapters["cola"] / adapters["lora"] < 4.5
    assert card["param_matched_rank"] == 64 and card["param_matched_alpha"] == 32
    assert abs(adapters["lora_param_matched"] / adapters["cola"] - 1) < 0.05
    assert adapters["frozen"] == 0 and card["params"]["frozen"] > 0  # the decoder trains under every method


@pytest.mark.parametrize("experiment", ALL_EXPERIMENTS)
def test_every_experiment_builds_its_datamodule(experiment, tmp_path):
    """Every data key an experiment sets reaches a constructor that takes it (a dry run stopped at its first job)."""
    from hydra.utils import instantiate

    for debug in ([], ["debug=fast"]):
        cfg = compose([f"experiment={experiment}", "peft=cola", f"data.root={tmp_path}", *debug])
        assert instantiate(cfg.data, _convert_="all") is not None
