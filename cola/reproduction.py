"""The paper's official training settings, each read from the official code, and how this repo's experiment configs
resolve them.

Every official value in :data:`SETTINGS` carries where it was read: ``path:line`` in the authors' repository
(peterwisu/CoLA at commit d26d99d, :data:`OFFICIAL_COMMIT`), or ``no official code`` with the reason (all of MS3:
the official AVS code is S4 only). A setting this repo cannot express (other towers, the AVS decoder and what follows
from them) also carries a ``deviation`` with its reason; every other setting is expressed exactly and must match.
:func:`experiment_card` composes an ``experiment=`` file the way ``train.py`` does and lists, for every setting, the
resolved value, the official one, its source and whether they match. ``scripts/reproduction_card.py`` prints the card
and writes ``docs/reproduction.md``; ``tests/harness/test_reproduction.py`` asserts that every ``main_*`` / ablation /
controls file matches and that every official value names its source.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cola.peft.methods import PAPER_COMPARISON, PAPER_METHOD, REFERENCE_METHOD

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OFFICIAL_REPO = "peterwisu/CoLA"
OFFICIAL_COMMIT = "d26d99d"

G, AVE, AVS, MS3 = "grounding", "ave", "avs_s4", "avs_ms3"
FAMILIES = {"refcoco": G, "refcoco+": G, "refcocog": G, "ave": AVE, "avs_s4": AVS, "avs_ms3": MS3}
BEYOND_PAPER = ("main_avqa", "ablation_streams")
"""Experiments on tasks the paper does not run (MUSIC-AVQA, three towers): no official settings to match; their
files state the recipe they follow."""

NO_MS3 = (
    "no official code: the official AVS code trains and evaluates S4 only (its one dataset class, "
    "audio_visual/avs/CoLA/dataloader.py:41 S4Dataset; data paths Single-source/s4_* at audio_visual/avs/CoLA/"
    "config.py:28-32); MS3 follows S4's setting"
)
SOURCE = re.compile(r"^(vision_language|audio_visual)/[\w./+-]+:\d+(-\d+)?")
"""What a source must start with: a file of the official repository and a line (or range)."""


@dataclass(frozen=True)
class Official:
    """An official value, where it was read (``path:line`` in :data:`OFFICIAL_REPO` at :data:`OFFICIAL_COMMIT`, or
    ``no official code: <reason>``) and, only for what this repo cannot express, the deliberate difference."""

    value: Any
    source: str
    deviation: str = ""


@dataclass(frozen=True)
class Setting:
    """One row of the card: a name, how to read it from the composed configs, the official value per family.

    ``read`` gets ``{method: cfg}`` (the experiment composed with each method of the paper's comparison,
    :data:`cola.peft.PAPER_COMPARISON`: ``peft=cola`` and ``peft=lora``).
    """

    name: str
    read: Callable[[dict[str, DictConfig]], Any]
    official: dict[str, Official]


def _paper(cfgs: dict[str, DictConfig]) -> DictConfig:
    """The experiment composed with the paper's method (CoLA): what every setting but the LoRA baseline's reads."""
    return cfgs[PAPER_METHOD]


def _get(key: str, method: str = PAPER_METHOD) -> Callable[[dict[str, DictConfig]], Any]:
    def read(cfgs: dict[str, DictConfig]) -> Any:
        value = OmegaConf.select(cfgs[method], key)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return read


def _lambda_init(cfgs: dict[str, DictConfig]) -> float:
    peft = _paper(cfgs).peft
    return float(peft.alpha / peft.rank if peft.lambda_init is None else peft.lambda_init)


def _selection(cfgs: dict[str, DictConfig]) -> str:
    task = _paper(cfgs).task
    mask = task.get("monitor_mask")
    split = _paper(cfgs).data.get("select_on", "val")
    monitor = str(task.monitor).replace("val/", f"{split}/")
    return f"{monitor} (box), {mask} (mask)" if mask else monitor


def _augmentation(cfgs: dict[str, DictConfig]) -> Any:
    aug = _get("data.augment")(cfgs)
    return "none" if aug in (None, False) else aug


def _towers(cfgs: dict[str, DictConfig]) -> str:
    model = _paper(cfgs).model
    second = model.get(_paper(cfgs).task.modality)
    name = second.get("name_or_path") if second is not None else None
    return f"{model.vision.name} @ {model.image_size} + {name}"


def _effective_batch(cfgs: dict[str, DictConfig]) -> int:
    c = _paper(cfgs)
    return int(c.data.batch_size) * int(c.trainer.devices) * int(c.trainer.accumulate_grad_batches)


def _head(key: str, official_head_value: Any) -> Callable[[dict[str, DictConfig]], Any]:
    """A property of the grounding head: ``official_head_value`` where the run uses the official head, else the
    fusion head's ``task.head.<key>`` (so a run with another head shows what it uses)."""

    def read(cfgs: dict[str, DictConfig]) -> Any:
        head = _paper(cfgs).task.head
        return official_head_value if head.name == "official" else head.get(key)

    return read


def _o(value: Any, source: str, deviation: str = "") -> Official:
    return Official(value, source, deviation)


VL, VLL = "vision_language/CoLA/", "vision_language/LoRA/"
AV_E, AV_EL = "audio_visual/ave/CoLA/", "audio_visual/ave/LoRA/"
AV_S, AV_SL = "audio_visual/avs/CoLA/", "audio_visual/avs/LoRA/"
SETTINGS: list[Setting] = [
    Setting(
        "towers",
        _towers,
        {
            G: _o(
                "ViTDet-B/16 @ 448 + BERT-B",
                f"{VL}train.sh:51,53 (--backbone ViTDet, --imsize 448); {VL}train.py:187 (bert-base-uncased default)",
                "DINOv2-B/14 replaces ViTDet-B/16 (ViTDet's detectron2 weights are not a timm/HF checkpoint)",
            ),
            AVE: _o(
                "ViT-B/16 @ 224 + SSLAM",
                f"{AV_E}train.sh:9 (vit_b); {AV_E}vision_backbone.py:27; {AV_E}nets/AVENet.py:35 (SSLAM)",
                "DINOv2-B/14 replaces ViT-B/16 (the official LoRA baselines already use DINOv2-B/14: "
                f"{AV_EL}train.sh:9 dino_b), AST replaces SSLAM (not on pip)",
            ),
            AVS: _o(
                "SwinV2-L @ 192 + SSLAM",
                f"{AV_S}model_backbone.py:6 (swinv2_large_window12_192_22k); {AV_S}model/PVT_AVSModel.py:397-405 (SSLAM)",
                "DINOv2-B/14 @ 224 replaces SwinV2-L @ 192, AST replaces SSLAM (not on pip)",
            ),
        },
    ),
    Setting(
        "optimizer",
        _get("optim.optimizer"),
        {
            G: _o("adamw", f"{VL}train.py:122 (--optimizer default; train.sh passes none), :293"),
            AVE: _o("adam", f"{AV_E}main_trans.py:325-328"),
            AVS: _o("adam", f"{AV_S}train.py:256-257"),
        },
    ),
    Setting(
        "weight decay",
        _get("optim.weight_decay"),
        {
            G: _o(1e-4, f"{VL}train.py:116 (--weight_decay default), :293"),
            AVE: _o(0.0, f"{AV_E}main_trans.py:325-328 (Adam, no weight_decay)"),
            AVS: _o(0.0, f"{AV_S}train.py:257 (Adam, no weight_decay; --wt_dec is parsed, never used)"),
        },
    ),
    Setting(
        "weight decay on biases/norms/lambda",
        _get("optim.decay_1d"),
        {
            G: _o(True, f"{VL}train.py:273-277,293 (one weight_decay for every parameter group)"),
            AVE: _o(False, f"{AV_E}main_trans.py:325-328 (no weight decay at all)"),
            AVS: _o(False, f"{AV_S}train.py:257 (no weight decay at all)"),
        },
    ),
    Setting(
        "lr adapters",
        _get("optim.lr_adapters"),
        {
            G: _o(1e-4, f"{VL}train.sh:43 (--lr_adapter); {VL}train.py:259-261,275"),
            AVE: _o(5e-6, f"{AV_E}train.sh:17; {AV_E}main_trans.py:316,327"),
            AVS: _o(2e-4, f"{AV_S}train.sh:10 (one lr for every parameter); {AV_S}train.py:257"),
        },
    ),
    Setting(
        "lr heads (+ fusion)",
        _get("optim.lr_heads"),
        {
            G: _o(2.5e-5, f"{VL}train.sh:45 (--lr); {VL}train.py:262-263,274"),
            AVE: _o(4e-6, f"{AV_E}train.sh:18; {AV_E}main_trans.py:313,326"),
            AVS: _o(2e-4, f"{AV_S}train.sh:10; {AV_S}train.py:257"),
        },
    ),
    Setting(
        "schedule",
        _get("optim.schedule"),
        {
            G: _o("poly", f"{VL}train.sh:57 (--lr_scheduler poly); {VL}train.py:303-305"),
            AVE: _o("constant", f"{AV_E}main_trans.py:325-337 (no scheduler)"),
            AVS: _o("constant", f"{AV_S}train.py:257-335 (no scheduler)"),
        },
    ),
    Setting(
        "schedule interval",
        _get("optim.schedule_interval"),
        {
            G: _o("epoch", f"{VL}train.py:388 (lr_scheduler.step() once per epoch)"),
            AVE: _o("step", f"{AV_E}main_trans.py:325-337 (constant: no scheduler to step)"),
            AVS: _o("step", f"{AV_S}train.py:257-335 (constant: no scheduler to step)"),
        },
    ),
    Setting("poly power", _get("optim.poly_power"), {G: _o(0.9, f"{VL}train.py:118 (--lr_power default), :303")}),
    Setting(
        "warm-up",
        _get("optim.warmup_ratio"),
        {
            G: _o(0.0, f"{VL}train.py:303-305 (the poly LambdaLR starts at the full lr)"),
            AVE: _o(0.0, f"{AV_E}main_trans.py:325-337 (no scheduler)"),
            AVS: _o(0.0, f"{AV_S}train.py:257-335 (no scheduler)"),
        },
    ),
    Setting(
        "gradient clipping",
        _get("trainer.gradient_clip_val"),
        {
            G: _o(None, f"{VL}train.py:119 (--clip_max_norm default 0); {VL}engine.py:111-112 (clips only if > 0)"),
            AVE: _o(None, f"{AV_E}main_trans.py:236-257 (no clipping in the step)"),
            AVS: _o(None, f"{AV_S}train.py:306-315 (no clipping in the step)"),
        },
    ),
    Setting(
        "precision",
        _get("trainer.precision"),
        {
            G: _o("16-mixed", f"{VL}engine.py:71 (autocast), :113 (GradScaler); {VL}train.py:377"),
            AVE: _o("32-true", f"{AV_E}main_trans.py:247-252 (autocast imported at :58, never used)"),
            AVS: _o("32-true", f"{AV_S}train.py:288,307 (plain forward and backward)"),
        },
    ),
    Setting(
        "batch per GPU",
        _get("data.batch_size"),
        {
            G: _o(20, f"{VL}train.sh:16,44"),
            AVE: _o(2, f"{AV_E}train.sh:15,45"),
            AVS: _o(2, f"{AV_S}train.sh:11,30"),
        },
    ),
    Setting(
        "GPUs",
        _get("trainer.devices"),
        {
            G: _o(4, f"{VL}train.sh:14,32 (--nproc_per_node 4)"),
            AVE: _o(1, f"{AV_E}main_trans.py:42-52 (one CUDA_VISIBLE_DEVICES device, no DataParallel)"),
            AVS: _o(1, f"{AV_S}train.py:228 (DataParallel splits the batch of 2: the GPU count leaves it unchanged)"),
        },
    ),
    Setting(
        "gradient accumulation",
        _get("trainer.accumulate_grad_batches"),
        {
            G: _o(1, f"{VL}train.sh:17,39 (--grad_accum_steps 1; the default 4 at train.py:200 is overridden)"),
            AVE: _o(1, f"{AV_E}train.sh:16,48"),
            AVS: _o(4, f"{AV_S}train.sh:12,36; {AV_S}train.py:306-311"),
        },
    ),
    Setting(
        "effective batch",
        _effective_batch,
        {
            G: _o(80, f"{VL}train.sh:16 x :14 x :17 (20 per GPU x 4 GPUs x 1)"),
            AVE: _o(2, f"{AV_E}train.sh:15 x :16 (2 x 1)"),
            AVS: _o(8, f"{AV_S}train.sh:11 x :12 (2 x 4 accumulation)"),
        },
    ),
    Setting(
        "epochs",
        _get("trainer.max_epochs"),
        {
            G: _o(150, f"{VL}train.sh:18,62"),
            AVE: _o(50, f"{AV_E}train.sh:20,47"),
            AVS: _o(20, f"{AV_S}train.sh:13,41"),
        },
    ),
    Setting(
        "epochs, LoRA baselines",
        _get("trainer.max_epochs", REFERENCE_METHOD),
        {
            G: _o(150, f"{VLL}train.sh:18"),
            AVE: _o(50, f"{AV_EL}train.sh:20,48"),
            AVS: _o(
                15,
                f"{AV_SL}train.sh:28-40 passes no --max_epoches, so the default applies: {AV_SL}base_options.py:25. "
                "Probably a slip of the script (CoLA trains 20): the paper may have used 20 "
                "(official.max_epochs in experiment/main_avs_*.yaml)",
            ),
        },
    ),
    Setting(
        "early stopping patience",
        _get("callbacks.early_stopping.patience"),
        {
            G: _o(None, f"{VL}train.py:381 (all epochs run: no early stop in the loop)"),
            AVE: _o(10, f"{AV_E}train.sh:19,46; {AV_E}main_trans.py:341,358,404"),
            AVS: _o(
                None,
                f"{AV_S}base_options.py:70 (patience 5) never fires: the counter is reset every epoch "
                f"({AV_S}train.py:339)",
            ),
        },
    ),
    Setting(
        "model selection",
        _selection,
        {
            G: _o(
                "val/acc@0.5 (box), val/miou (mask)", f"{VL}train.py:324 (val split), :406-410 (best box, best mask)"
            ),
            AVE: _o("test/acc", f"{AV_E}main_trans.py:296 (the 'val' loader reads the test split), :338,357"),
            AVS: _o("test/miou", f"{AV_S}train.py:248 (S4Dataset('test')), :365,371"),
        },
    ),
    Setting(
        "model selection on ties",
        _get("callbacks.model_checkpoint.select_ties"),
        {
            G: _o("earlier", f"{VL}train.py:406,409 (strict >: the earlier checkpoint is kept)"),
            AVE: _o("later", f"{AV_E}main_trans.py:357-359 (>=: the later checkpoint is kept, patience resets)"),
            AVS: _o("earlier", f"{AV_S}train.py:371 (strict >)"),
        },
    ),
    Setting(
        "augmentation",
        _augmentation,
        {
            G: _o(
                "official",
                f"{VL}train.sh:48-50 (--aug_scale --aug_translate --aug_crop); {VL}datasets/__init__.py:19-42",
            ),
            AVE: _o("none", f"{AV_E}dataloader.py:108-112,257-274 (one deterministic pipeline)"),
            AVS: _o("none", f"{AV_S}dataloader.py:57-61"),
        },
    ),
    Setting(
        "image size",
        _get("model.image_size"),
        {
            G: _o(448, f"{VL}train.sh:53"),
            AVE: _o(224, f"{AV_E}dataloader.py:108-111"),
            AVS: _o(
                192,
                f"{AV_S}model/PVT_AVSModel.py:483 (frames resized to 192 for SwinV2-L)",
                "DINOv2 at 224 (SwinV2-L runs at 192)",
            ),
        },
    ),
    Setting(
        "input resize",
        _get("data.resize"),
        {
            G: _o(
                "stretch", f"{VL}datasets/transforms.py:280-281 (interpolated to 448 x 448 after the long-side resize)"
            )
        },
    ),
    Setting("max query length", _get("data.max_query_len"), {G: _o(40, f"{VL}train.sh:56")}),
    Setting(
        "text padding",
        _get("data.pad_to"),
        {G: _o("max_length", f"{VL}datasets/data_loader.py:112 (every expression zero-padded to max_query_len)")},
    ),
    Setting("grounding head", _get("task.head.name"), {G: _o("official", f"{VL}models/EEVG.py:82-103,243-286")}),
    Setting("head width", _get("task.head.width"), {G: _o(768, f"{VL}train.py:159 (--vl_hidden_dim default)")}),
    Setting("head decoder layers", _get("task.head.layers"), {G: _o(3, f"{VL}train.sh:59 (--vl_enc_layers 3)")}),
    Setting("head feed-forward", _get("task.head.ff"), {G: _o(1024, f"{VL}train.sh:60 (--dim_feedforward 1024)")}),
    Setting("head attention heads", _get("task.head.heads"), {G: _o(8, f"{VL}models/EEVG.py:88 (nhead=8)")}),
    Setting("head dropout", _get("task.head.dropout"), {G: _o(0.1, f"{VL}models/EEVG.py:88 (dropout=0.1)")}),
    Setting(
        "visual-token elimination",
        lambda c: _paper(c).task.head.name == "official" and bool(_paper(c).task.head.eliminate),
        {G: _o(True, f"{VL}train.sh:52 (--is_eliminate); {VL}models/decoder.py:136-153")},
    ),
    Setting(
        "elimination threshold",
        _get("task.head.eliminate_threshold"),
        {G: _o(0.015, f"{VL}train.py:165 (--eliminated_threshold default)")},
    ),
    Setting(
        "elimination random keep",
        _get("task.head.eliminate_keep"),
        {G: _o(0.1, f"{VL}models/decoder.py:146-147 (rand >= 0.9)")},
    ),
    Setting("box head", _head("fusion_box", "mlp"), {G: _o("mlp", f"{VL}models/EEVG.py:103,282 (MLP 768-768-4, 3)")}),
    Setting(
        "mask head",
        _head("fusion_mask", "official"),
        {G: _o("official", f"{VL}models/EEVG.py:97-98,262-275 (MLP 768-768-p^2, 2 layers; 5x5 conv)")},
    ),
    Setting(
        "box loss weight (L1 + GIoU)",
        _get("task.module.loss_alpha"),
        {G: _o(0.1, f"{VL}train.sh:61 (--loss_alpha 0.1); {VL}utils/loss_utils.py:63-71")},
    ),
    Setting(
        "mask loss weights (focal, Dice)",
        lambda c: [_paper(c).task.module.w_focal, _paper(c).task.module.w_dice],
        {G: _o([1.0, 1.0], f"{VL}utils/loss_utils.py:73-76; {VL}engine.py:82 (plain sum)")},
    ),
    Setting(
        "AVE head",
        _get("task.module.temporal"),
        {AVE: _o("official", f"{AV_E}nets/AVENet.py:262-266 (concat CLS -> Linear 512 -> Linear 29, softmax)")},
    ),
    Setting(
        "AVE loss",
        _get("task.module.loss"),
        {AVE: _o("softmax_bce", f"{AV_E}main_trans.py:330 (nn.BCELoss); {AV_E}nets/AVENet.py:265-266 (softmax)")},
    ),
    Setting(
        "AVS losses (BCE, IoU)",
        lambda c: [_paper(c).task.module.w_bce, _paper(c).task.module.w_iou],
        {AVS: _o([1.0, 0.0], f"{AV_S}loss.py:95,99-103 (BCE, first frame; sa_loss off: base_options.py:31-32)")},
    ),
    Setting(
        "AVS head",
        lambda c: "light decoder (ours)",
        {
            AVS: _o(
                "TPAVI decoder",
                f"{AV_S}model/PVT_AVSModel.py:353-366,423-433; {AV_S}model/TPAVI.py:32",
                "a light decoder replaces TPAVI (its FPN is built for SwinV2-L's four stages; DINOv2 has one scale)",
            )
        },
    ),
    Setting(
        "rank r",
        _get("peft.rank"),
        {G: _o(16, f"{VL}train.sh:22,41"), AVE: _o(16, f"{AV_E}train.sh:23,41"), AVS: _o(16, f"{AV_S}train.sh:15,34")},
    ),
    Setting(
        "alpha",
        _get("peft.alpha"),
        {G: _o(8, f"{VL}train.sh:23,42"), AVE: _o(8, f"{AV_E}train.sh:24,42"), AVS: _o(8, f"{AV_S}train.sh:16,35")},
    ),
    Setting(
        "lambda init",
        _lambda_init,
        {
            G: _o(0.5, f"{VL}loralib/layers.py:243,414 (alpha / r)"),
            AVE: _o(0.1, f"{AV_E}train.sh:25,51 (lora_c_scaling)"),
            AVS: _o(0.1, f"{AV_S}train.sh:18,40 (lora_c_scaling)"),
        },
    ),
    Setting(
        "hypernet reduction",
        _get("peft.reduction"),
        {
            G: _o(16, f"{VL}loralib/layers.py:222,369 (default, never passed)"),
            AVE: _o(16, f"{AV_E}train.sh:26,52"),
            AVS: _o(
                {"vision": 16, "audio": 8},
                f"{AV_S}train.sh:17 (2); {AV_S}custom_timm/models/swin_transformer_v2.py:658 (vision: 2**4 = 16); "
                f"{AV_S}model/PVT_AVSModel.py:395 (audio: hidden 96 = 768 / 8)",
            ),
        },
    ),
    Setting(
        "hypernet init",
        _get("peft.hypernet_init"),
        {
            G: _o("trunc_normal", f"{VL}models/visual_model/ViTDet.py:996,1001-1006 (the host's _init_weights)"),
            AVE: _o("trunc_normal", f"{AV_E}custom_timm/models/vision_transformer.py:582-583,591"),
            AVS: _o("trunc_normal", f"{AV_S}custom_timm/models/swin_transformer_v2.py:676,682"),
        },
    ),
    Setting(
        "adapter dropout",
        _get("peft.dropout"),
        {
            G: _o(0.0, f"{VL}loralib/layers.py:218,365 (default, never passed)"),
            AVE: _o(0.0, f"{AV_E}loralib/layers.py:212,334 (default, never passed)"),
            AVS: _o(0.0, f"{AV_S}loralib/layers.py:213,364 (default, never passed)"),
        },
    ),
    Setting(
        "condition pooling",
        _get("peft.condition_pooling"),
        {
            G: _o(
                {"vision": "mean", "text": "mean_with_padding"},
                f"{VL}models/EEVG.py:146,170,187 (vision: mean of the patches); :147,171,188 (text: "
                "txt_feats.mean(dim=1), all 40 positions)",
            ),
            AVE: _o("cls", f"{AV_E}nets/AVENet.py:196-197,210-211,221-222"),
            AVS: _o({"vision": "mean", "audio": "cls"}, f"{AV_S}model/PVT_AVSModel.py:545-546,560-562,577-578"),
        },
    ),
    Setting(
        "propagation",
        _get("peft.propagation"),
        {
            G: _o("progressive", f"{VL}models/EEVG.py:146-147,166-171,186-188"),
            AVE: _o("progressive", f"{AV_E}nets/AVENet.py:196-207,210-218,221-231"),
            AVS: _o("progressive", f"{AV_S}model/PVT_AVSModel.py:545-555,560-570,577-587"),
        },
    ),
    Setting(
        "LoRA rank-matched r",
        _get("peft.rank", REFERENCE_METHOD),
        {G: _o(16, f"{VLL}train.sh:22"), AVE: _o(16, f"{AV_EL}train.sh:23"), AVS: _o(16, f"{AV_SL}train.sh:15")},
    ),
    Setting(
        "LoRA rank-matched alpha",
        _get("peft.alpha", REFERENCE_METHOD),
        {G: _o(8, f"{VLL}train.sh:23"), AVE: _o(8, f"{AV_EL}train.sh:24"), AVS: _o(84, f"{AV_SL}train.sh:16")},
    ),
    Setting(
        "audio channel",
        _get("data.audio_channel"),
        {
            AVE: _o("first", f"{AV_E}dataloader.py:164-165,206 (kaldi.fbank channel=-1 reads channel 0)"),
            AVS: _o("first", f"{AV_S}dataloader.py:115 (downmix commented out), :124"),
        },
    ),
    Setting(
        "audio input",
        _get("data.audio_input"),
        {
            AVE: _o("pad", f"{AV_E}dataloader.py:230-232 (zero-padded to 1024 frames)"),
            AVS: _o("pad", f"{AV_S}dataloader.py:142-144"),
        },
    ),
    Setting(
        "audio clip seconds",
        _get("data.audio_clip_seconds"),
        {
            AVE: _o(1.0, f"{AV_E}base_options.py:152 (audio_length default); {AV_E}dataloader.py:198-201"),
            AVS: _o(1.95, f"{AV_S}base_options.py:51 (audio_length default)"),
        },
    ),
    Setting(
        "audio windows",
        _get("data.audio_windows"),
        {
            AVE: _o("official", f"{AV_E}dataloader.py:198-201 (10 starts, linspace(0, len - 1.1 s, 10))"),
            AVS: _o("official", f"{AV_S}dataloader.py:113-114,127 (5 starts, linspace(0, len - 2.05 s, 5))"),
        },
    ),
]
for _s in SETTINGS:  # MS3: no official code; S4's values, the reason in the source
    if AVS in _s.official:
        _s.official[MS3] = replace(_s.official[AVS], source=f"{NO_MS3} ({_s.official[AVS].source})")

TOWER_SETTINGS = {
    G: "DINOv2-B/14 @ 448 + BERT-B",
    AVE: "DINOv2-B/14 @ 224 + AST",
    AVS: "DINOv2-B/14 @ 224 + AST",
    MS3: "DINOv2-B/14 @ 224 + AST",
}


def family_of(task: str) -> str:
    if task not in FAMILIES:
        raise ValueError(
            f"task {task!r} has no official settings; tasks with official settings (docs/reproduction.md): "
            f"{sorted(FAMILIES)}"
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
    """The experiment composed with each method of the paper's comparison (:data:`cola.peft.PAPER_COMPARISON`):
    ``peft=cola`` and ``peft=lora`` (the rank-matched baseline)."""
    return {m: compose([f"experiment={experiment}", f"peft={m}", *overrides]) for m in PAPER_COMPARISON}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def settings_table(cfgs: dict[str, DictConfig]) -> dict[str, dict[str, Any]]:
    """``{setting: {"repo", "official", "source", "match", "status"[, "deviation"]}}`` for the composed task's family.

    ``status``: ``match`` | ``no official code`` (MS3: matches S4's value) | ``deviation`` (what the repo cannot
    express, with its reason) | ``MISMATCH``.
    """
    family = family_of(str(_paper(cfgs).task.name))
    rows: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        if family not in s.official:
            continue
        official = s.official[family]
        repo = s.read(cfgs)
        if s.name == "towers":
            repo = TOWER_SETTINGS[family] + f" ({repo})"
        match = _same(repo, official.value)
        row = {"repo": repo, "official": official.value, "source": official.source, "match": match}
        if official.deviation:
            row["deviation"] = official.deviation
        if match:
            row["status"] = "no official code" if official.source.startswith("no official code") else "match"
        else:
            row["status"] = "deviation" if official.deviation else "MISMATCH"
        rows[s.name] = row
    return rows


def mismatches(table: dict[str, dict[str, Any]]) -> list[str]:
    """Settings that differ from the official value without a deliberate difference (one the repo cannot express)."""
    return [k for k, row in table.items() if row["status"] == "MISMATCH"]


def unsourced() -> list[str]:
    """``family/setting`` of every official value whose source is neither ``path:line`` in the official repository
    nor ``no official code: <reason>`` (the card's guarantee; a test keeps this empty)."""
    return [
        f"{family}/{s.name}"
        for s in SETTINGS
        for family, o in s.official.items()
        if not (SOURCE.match(o.source) or o.source.startswith("no official code: "))
    ]


CARD_METHODS = ("frozen", "lora", "lora_param_matched", "moka", "cola")
"""The methods the paper's tables compare (the card reproduces those tables; other registered methods, e.g. VeRA, are
beyond the paper and not on it)."""


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
        if encoder.report.lora_rank is not None:  # a derived LoRA (Method.derive): its rank and alpha
            out["param_matched_rank"] = encoder.report.lora_rank
            out["param_matched_alpha"] = float(cfg.peft.alpha) / float(cfg.peft.rank) * encoder.report.lora_rank
    out["params"] = params
    out["adapter_params"] = adapters
    return out


def experiment_card(experiment: str, overrides: list[str] = (), *, params: bool = True) -> dict[str, Any]:
    """``{"settings": {name: row}, "head": str (grounding), "params": {...}, "param_matched_rank": r, ...}``
    (rows as :func:`settings_table`)."""
    cfgs = experiment_configs(experiment, list(overrides))
    card: dict[str, Any] = {"settings": settings_table(cfgs)}
    head = OmegaConf.select(_paper(cfgs), "task.head")
    if head is not None:
        h = OmegaConf.to_container(head, resolve=True)
        card["head"] = (
            f"{h['name']} (width {h['width']}, {h['layers']} layers, ff {h['ff']}, {h['heads']} heads, "
            f"elimination {'on' if h['name'] == 'official' and h['eliminate'] else 'off'})"
        )
    if params:
        card.update(method_parameters(experiment, list(overrides)))
        card["param_note"] = (
            "lora_param_matched: its rank is chosen so that its *adapter* parameters match CoLA's (the heads are "
            "the same for every method and are not counted), as the official scripts' hand-set ranks do."
        )
    return card
