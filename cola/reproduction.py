"""The paper's official training settings (docs/official_settings.md) and how this repo's experiment configs resolve
them.

``OFFICIAL`` transcribes the table of docs/official_settings.md#settings per task family (grounding, AVE, AVS);
:func:`experiment_card` composes an ``experiment=`` file the way ``train.py`` does and lists, for every setting,
the resolved value, the official one and whether they match. Where this repo deliberately differs
(docs/official_settings.md#deliberate-differences: other towers, letterbox resize, a light AVS decoder), the row says so
instead of matching. ``scripts/reproduction_card.py`` prints the card and
writes ``docs/reproduction.md``; ``tests/harness/test_reproduction.py`` asserts that every ``main_*`` / ablation /
controls file matches, so a demo default (``configs/train.yaml``) can never leak into a reproduction again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

FAMILIES = {
    "refcoco": "grounding",
    "refcoco+": "grounding",
    "refcocog": "grounding",
    "ave": "ave",
    "avs_s4": "avs",
    "avs_ms3": "avs",
}
BEYOND_PAPER = ("main_avqa", "ablation_streams")
"""Experiments on tasks the paper does not run (MUSIC-AVQA, three towers): no official settings to match; their
files state the recipe they follow."""


@dataclass(frozen=True)
class Setting:
    """One row of docs/official_settings.md#settings: a name, how to read it from the composed configs, the official
    value per family.

    ``read`` gets ``{method: cfg}`` (the experiment composed with ``peft=cola`` and ``peft=lora``).
    """

    name: str
    read: Callable[[dict[str, DictConfig]], Any]
    official: dict[str, Any]


def _get(key: str, method: str = "cola") -> Callable[[dict[str, DictConfig]], Any]:
    def read(cfgs: dict[str, DictConfig]) -> Any:
        value = OmegaConf.select(cfgs[method], key)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return read


def _lambda_init(cfgs: dict[str, DictConfig]) -> float:
    peft = cfgs["cola"].peft
    return float(peft.alpha / peft.rank if peft.lambda_init is None else peft.lambda_init)


def _selection(cfgs: dict[str, DictConfig]) -> str:
    task = cfgs["cola"].task
    mask = task.get("monitor_mask")
    return f"{task.monitor} (box), {mask} (mask)" if mask else str(task.monitor)


def _augmentation(cfgs: dict[str, DictConfig]) -> Any:
    aug = _get("data.augment")(cfgs)
    return "none" if aug in (None, False) else aug


def _towers(cfgs: dict[str, DictConfig]) -> str:
    model = cfgs["cola"].model
    second = model.get(cfgs["cola"].task.modality)
    name = second.get("name_or_path") if second is not None else None
    return f"{model.vision.name} @ {model.image_size} + {name}"


def _effective_batch(cfgs: dict[str, DictConfig]) -> int:
    c = cfgs["cola"]
    return int(c.data.batch_size) * int(c.trainer.devices) * int(c.trainer.accumulate_grad_batches)


G, AVE, AVS = "grounding", "ave", "avs"
SETTINGS: list[Setting] = [
    Setting(
        "towers",
        _towers,
        {
            G: "ViTDet-B/16 @ 448 + BERT-B",
            AVE: "ViT-B/16 @ 224 + SSLAM",
            AVS: "SwinV2-L @ 192 + SSLAM",
        },
    ),
    Setting("optimizer", _get("optim.optimizer"), {G: "adamw", AVE: "adam", AVS: "adam"}),
    Setting("weight decay", _get("optim.weight_decay"), {G: 1e-4, AVE: 0.0, AVS: 0.0}),
    Setting("weight decay on biases/norms/lambda", _get("optim.decay_1d"), {G: True, AVE: False, AVS: False}),
    Setting("lr adapters", _get("optim.lr_adapters"), {G: 1e-4, AVE: 5e-6, AVS: 2e-4}),
    Setting("lr heads (+ fusion)", _get("optim.lr_heads"), {G: 2.5e-5, AVE: 4e-6, AVS: 2e-4}),
    Setting("schedule", _get("optim.schedule"), {G: "poly", AVE: "constant", AVS: "constant"}),
    Setting("schedule interval", _get("optim.schedule_interval"), {G: "epoch", AVE: "step", AVS: "step"}),
    Setting("poly power", _get("optim.poly_power"), {G: 0.9}),
    Setting("warm-up", _get("optim.warmup_ratio"), {G: 0.0, AVE: 0.0, AVS: 0.0}),
    Setting("gradient clipping", _get("trainer.gradient_clip_val"), {G: None, AVE: None, AVS: None}),
    Setting("precision", _get("trainer.precision"), {G: "16-mixed", AVE: "32-true", AVS: "32-true"}),
    Setting("batch per GPU", _get("data.batch_size"), {G: 20, AVE: 2, AVS: 2}),
    Setting("GPUs", _get("trainer.devices"), {G: 4, AVE: 1, AVS: 1}),
    Setting("gradient accumulation", _get("trainer.accumulate_grad_batches"), {G: 1, AVE: 1, AVS: 4}),
    Setting("effective batch", _effective_batch, {G: 80, AVE: 2, AVS: 8}),
    Setting("epochs", _get("trainer.max_epochs"), {G: 150, AVE: 50, AVS: 20}),
    Setting("early stopping patience", _get("callbacks.early_stopping.patience"), {G: None, AVE: 10, AVS: None}),
    Setting(
        "model selection",
        _selection,
        {
            G: "val/acc@0.5 (box), val/miou (mask)",
            AVE: "test/acc",
            AVS: "test/miou",
        },
    ),
    Setting("augmentation", _augmentation, {G: "official", AVE: "none", AVS: "none"}),
    Setting("image size", _get("model.image_size"), {G: 448, AVE: 224, AVS: 192}),
    Setting("input resize", _get("data.resize"), {G: "stretch"}),
    Setting("max query length", _get("data.max_query_len"), {G: 40}),
    Setting("fusion layers", _get("task.module.fusion_layers"), {G: 3}),
    Setting("fusion width", _get("task.module.d_fusion"), {G: 256}),
    Setting("fusion feed-forward", _get("task.module.d_ff"), {G: 1024}),
    Setting("box head", _get("task.module.box_head"), {G: "mlp"}),
    Setting("mask head", _get("task.module.mask_head"), {G: "official"}),
    Setting("box loss weight (L1 + GIoU)", _get("task.module.loss_alpha"), {G: 0.1}),
    Setting(
        "mask loss weights (focal, Dice)",
        lambda c: [c["cola"].task.module.w_focal, c["cola"].task.module.w_dice],
        {G: [1.0, 1.0]},
    ),
    Setting("AVE head", _get("task.module.temporal"), {AVE: "official"}),
    Setting("AVE loss", _get("task.module.loss"), {AVE: "softmax_bce"}),
    Setting(
        "AVS losses (BCE, IoU)", lambda c: [c["cola"].task.module.w_bce, c["cola"].task.module.w_iou], {AVS: [1.0, 0.0]}
    ),
    Setting("AVS head", lambda c: "light decoder (ours)", {AVS: "TPAVI decoder"}),
    Setting("rank r", _get("peft.rank"), {G: 16, AVE: 16, AVS: 16}),
    Setting("alpha", _get("peft.alpha"), {G: 8, AVE: 8, AVS: 8}),
    Setting("lambda init", _lambda_init, {G: 0.5, AVE: 0.1, AVS: 0.1}),
    Setting("hypernet reduction", _get("peft.reduction"), {G: 16, AVE: 16, AVS: {"vision": 16, "audio": 8}}),
    Setting("hypernet init", _get("peft.hypernet_init"), {G: "trunc_normal", AVE: "trunc_normal", AVS: "trunc_normal"}),
    Setting("adapter dropout", _get("peft.dropout"), {G: 0.0, AVE: 0.0, AVS: 0.0}),
    Setting(
        "condition pooling",
        _get("peft.condition_pooling"),
        {
            G: "mean",
            AVE: "cls",
            AVS: {"vision": "mean", "audio": "cls"},
        },
    ),
    Setting("propagation", _get("peft.propagation"), {G: "progressive", AVE: "progressive", AVS: "progressive"}),
    Setting("LoRA rank-matched r", _get("peft.rank", "lora"), {G: 16, AVE: 16, AVS: 16}),
    Setting("LoRA rank-matched alpha", _get("peft.alpha", "lora"), {G: 8, AVE: 8, AVS: 84}),
    Setting("audio input", _get("data.audio_input"), {AVE: "pad", AVS: "pad"}),
    Setting("audio clip seconds", _get("data.audio_clip_seconds"), {AVE: 1.0, AVS: 1.95}),
    Setting("audio windows", _get("data.audio_windows"), {AVE: "official", AVS: "official"}),
]

DEVIATIONS: dict[str, dict[str, str]] = {
    # docs/official_settings.md#deliberate-differences: what this repo deliberately does differently, by family and
    # setting name
    G: {
        "towers": "docs/official_settings.md#deliberate-differences: DINOv2-B/14 replaces ViTDet (EEVG token elimination not implemented)",
        "input resize": "docs/official_settings.md#deliberate-differences: letterbox keeps the aspect ratio (data.resize=stretch is the official resize)",
    },
    AVE: {
        "towers": "docs/official_settings.md#deliberate-differences: DINOv2-B/14 replaces ViT-B/16, AST replaces SSLAM (not on pip)"
    },
    AVS: {
        "towers": "docs/official_settings.md#deliberate-differences: DINOv2-B/14 @ 224 replaces SwinV2-L @ 192, AST replaces SSLAM",
        "image size": "docs/official_settings.md#deliberate-differences: DINOv2 at 224 (SwinV2-L runs at 192)",
        "AVS head": "docs/official_settings.md#deliberate-differences: a light decoder replaces TPAVI",
    },
}

TOWER_SETTINGS = {
    G: "DINOv2-B/14 @ 448 + BERT-B",
    AVE: "DINOv2-B/14 @ 224 + AST",
    AVS: "DINOv2-B/14 @ 224 + AST",
}


def family_of(task: str) -> str:
    if task not in FAMILIES:
        raise ValueError(
            f"task {task!r} has no official settings; tasks with official settings (docs/official_settings.md): {sorted(FAMILIES)}"
        )
    return FAMILIES[task]


def compose(overrides: list[str]) -> DictConfig:
    """Composes ``configs/train.yaml`` with ``overrides`` as ``train.py`` does (Hydra node included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import cola.resolvers  # noqa: F401  (registers ${cola.*} resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def experiment_configs(experiment: str, overrides: list[str] = ()) -> dict[str, DictConfig]:
    """The experiment composed with ``peft=cola`` and ``peft=lora`` (the rank-matched baseline)."""
    return {m: compose([f"experiment={experiment}", f"peft={m}", *overrides]) for m in ("cola", "lora")}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def settings_table(cfgs: dict[str, DictConfig]) -> dict[str, dict[str, Any]]:
    """``{setting: {"repo", "official", "match", "note"}}`` for the family of the composed task."""
    family = family_of(str(cfgs["cola"].task.name))
    rows: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        if family not in s.official:
            continue
        repo = s.read(cfgs)
        note = DEVIATIONS.get(family, {}).get(s.name, "")
        if s.name == "towers":
            repo = TOWER_SETTINGS[family] + f" ({repo})"
        rows[s.name] = {"repo": repo, "official": s.official[family], "match": _same(repo, s.official[family])}
        if note:
            rows[s.name]["note"] = note
    return rows


def mismatches(table: dict[str, dict[str, Any]]) -> list[str]:
    """Settings that differ from the official value without a deviation listed in
    docs/official_settings.md#deliberate-differences."""
    return [k for k, row in table.items() if not row["match"] and not row.get("note")]


CARD_METHODS = ("frozen", "lora", "lora_param_matched", "moka", "cola")


def _random_towers(cfg: DictConfig) -> None:
    """Points the model config at random-init towers of the same shapes (no download): timm without weights,
    BERT / AST from their default configs (``BertConfig()`` is BERT-base, ``ASTConfig()`` the AudioSet AST)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.assets = []
        cfg.model.vision.pretrained = False
        cfg.model.vision.checkpoint_path = None
        second = cfg.model[cfg.task.modality]
        if second.get("name_or_path") is not None:
            second.name_or_path = None
            second.tiny = {}


def method_parameters(experiment: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Trainable parameters (adapters + heads) of every compared method at the experiment's real tower shapes.

    The towers are built on the meta device (shapes only, no memory, no download), so this takes seconds.

    Returns:
        ``{"params": {method: trainable}, "adapter_params": {method: adapters only}, "param_matched_rank": int,
        "param_matched_alpha": float}``.
    """
    import torch

    from cola.harness import build_encoder, build_module

    class _Splits:  # what build_module reads from a DataModule
        val_split = "val"
        test_splits = ("test",)

    params: dict[str, int] = {}
    adapters: dict[str, int] = {}
    out: dict[str, Any] = {}
    for method in CARD_METHODS:
        cfg = compose([f"experiment={experiment}", f"peft={method}", *overrides])
        _random_towers(cfg)
        with torch.device("meta"):
            encoder = build_encoder(cfg)
            module = build_module(cfg, encoder, _Splits())
        params[method] = module.parameter_counts()["trainable"]
        adapters[method] = encoder.report.params_added
        if method == "lora_param_matched":
            out["param_matched_rank"] = encoder.report.lora_rank
            out["param_matched_alpha"] = float(cfg.peft.alpha) / float(cfg.peft.rank) * encoder.report.lora_rank
    out["params"] = params
    out["adapter_params"] = adapters
    return out


def experiment_card(experiment: str, overrides: list[str] = (), *, params: bool = True) -> dict[str, Any]:
    """``{"settings": {name: {"repo", "official", "match"[, "note"]}}, "params": {...}, "param_matched_rank": r}``."""
    card: dict[str, Any] = {"settings": settings_table(experiment_configs(experiment, list(overrides)))}
    if params:
        card.update(method_parameters(experiment, list(overrides)))
    return card
