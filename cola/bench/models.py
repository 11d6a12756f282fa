"""The compared models: the harness's own towers and adapters, composed from ``configs/`` as ``train.py`` does.

Each method is a set of Hydra overrides on ``configs/train.yaml`` (``task`` for the pair, ``model`` for the
towers, ``peft`` for the method); :func:`cola.harness.build_encoder` instantiates the ``model`` and ``peft``
nodes into the :class:`cola.models.DualEncoder` a training run gets. What the benchmark changes on top:

- random-init towers (speed and memory do not depend on the weights; no download): the paper's shapes
  (``model=dinov2_bert`` / ``dinov2_ast`` with BERT-base / AST-base from their config defaults) or, with
  ``tiny``, ``model=tiny`` at 192 wide and 4 blocks;
- no dropout, the run's rank and alpha; our LoRA with one A/B on timm's fused qkv (``split_fused: false``, HF
  peft's layout) unless ``lora_split_fused``;
- ``peft_lora``: HF peft's ``LoraConfig`` injected into the towers of a ``peft=frozen`` encoder (so no condition
  is exchanged, as for our ``lora``): the two LoRA rows differ only in the layer code;
- a small trainable head (:class:`BenchModel`) so that there is a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from .config import ROWS, BenchConfig

HEAD_DIM = 16  # outputs of the benchmark head
TEXT_LEN = 40  # max query length of the grounding task (docs/official_settings.md#deliberate-differences)
AUDIO_FRAMES = 100  # 1-s clips at a 10 ms shift
MEL_BINS = 128
BENCH_ADALORA = {"tinit": 0, "tfinal": 0, "delta_t": 1}
"""``peft.adalora`` of the benchmark: a budget allocation after every timed step (the budget phase's cost, its
worst case: importance update, scores and the model-wide k-th value), over a schedule longer than the run."""
SCHEDULE_STEPS = 10**6  # the trainer's step count the intra variants are told (the budget phase never ends)
TINY_WIDTH = "{hidden_size:192,num_hidden_layers:4,num_attention_heads:3,intermediate_size:768}"


@dataclass(frozen=True)
class Pair:
    """One tower pair: its Hydra overrides and inputs.

    Attributes:
        name: ``vl`` or ``av``.
        tiny: tiny towers.
        overrides: ``task`` and ``model`` overrides of ``configs/train.yaml``.
        streams: the stream names (vision first).
        image_size: input resolution of the vision tower.
        describe: human-readable tower shapes for the JSON config.
    """

    name: str
    tiny: bool
    overrides: tuple[str, ...]
    streams: tuple[str, str]
    image_size: int
    describe: dict[str, str]


def pair_spec(pair: str, *, tiny: bool) -> Pair:
    """Random-init towers at the paper's shapes (or tiny ones) for ``pair`` in ``vl | av``."""
    if pair not in ("vl", "av"):
        raise ValueError(f"--pair must be one of ['vl', 'av'], got {pair!r}")
    second = "text" if pair == "vl" else "audio"
    task = "task=refcoco" if pair == "vl" else "task=ave"
    if tiny:
        size = 112
        model = ["model=tiny", "model.assets=[]", "model.vision.checkpoint_path=null", "model.vision.depth=4"]
        vision = f"tiny DINOv2-shaped ViT (192 wide, 4 blocks, patch 14) @ {size} px, random init"
        text = ["~model.text.name_or_path", f"+model.text.tiny={TINY_WIDTH}"]
        audio = [f"model.audio.tiny={TINY_WIDTH}"]
    else:
        size = 448 if pair == "vl" else 224
        model = ["model=dinov2_bert" if pair == "vl" else "model=dinov2_ast", "model.vision.pretrained=false"]
        vision = f"vit_base_patch14_dinov2 @ {size} px, random init"
        text = ["~model.text.name_or_path", "+model.text.tiny={}"]  # {} = BertConfig defaults: BERT-base
        audio = ["~model.audio.name_or_path", "+model.audio.tiny={}"]  # {} = ASTConfig defaults: AST-base
    if pair == "vl":
        b = f"{'tiny BERT (192 wide, 4 layers)' if tiny else 'BERT-base (BertConfig defaults)'}, {TEXT_LEN} tokens"
        extra = text
    else:
        name = "tiny AST (192 wide, 4 layers)" if tiny else "AST-base (ASTConfig defaults)"
        b = f"{name}, 1-s clips: {AUDIO_FRAMES} frames x {MEL_BINS} mel bins"
        extra = [*audio, f"model.audio.max_length={AUDIO_FRAMES}", f"+model.audio.num_mel_bins={MEL_BINS}"]
    return Pair(
        name=pair,
        tiny=tiny,
        overrides=(task, *model, f"model.image_size={size}", *extra),
        streams=("vision", second),
        image_size=size,
        describe={"a": vision, "b": f"{b}, random init"},
    )


def method_overrides(method: str, cfg: BenchConfig) -> list[str]:
    """The ``peft`` overrides of row ``method`` (:data:`cola.bench.ROWS`): the run's rank and alpha; for a method
    that injects, no dropout, the run's layout on fused layers (``--lora-split-fused``) where its layers have one, the
    row's sharing and intra variant (AdaLoRA's schedule :data:`BENCH_ADALORA`)."""
    row = ROWS.get(method)
    if row is None:
        raise ValueError(f"unknown benchmark method {method!r}")
    out = [f"peft={row.peft}", f"rank={cfg.rank}", f"peft.alpha={cfg.alpha}"]
    if not row.method.injects:
        return out
    out.append("peft.dropout=0.0")
    if row.fused_layout:
        out.append(f"peft.split_fused={str(cfg.lora_split_fused).lower()}")
    if row.sharing is not None:
        out.append(f"peft.sharing={row.sharing}")
    if row.intra is not None:
        out += [f"peft.intra={row.intra}", *(f"peft.adalora.{k}={v}" for k, v in BENCH_ADALORA.items())]
    return out


def compose_config(method: str, pair: Pair, cfg: BenchConfig) -> DictConfig:
    """``configs/train.yaml`` composed with the pair's and the method's overrides, as ``train.py`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import cola.resolvers  # noqa: F401  (registers the ${cola.*} resolvers)
    from cola.cli import CONFIG_DIR

    overrides = [*pair.overrides, *method_overrides(method, cfg)]
    overrides.append(f"model.gradient_checkpointing={str(cfg.gradient_checkpointing).lower()}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class BenchModel(nn.Module):
    """The dual encoder plus a small trainable head: a linear layer on both streams' mean-pooled tokens."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.targets: dict[str, list[str]] = {}  # adapted layers per stream (filled by build_model)
        self.out_splits: dict[str, dict[str, int]] = {}
        self.head = nn.Linear(sum(t.hidden_size for t in encoder.towers.values()), HEAD_DIM)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.encoder(inputs)
        pooled = []
        for stream, tokens in out.tokens.items():
            w = out.masks[stream].to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
            pooled.append((tokens * w).sum(1) / w.sum(1).clamp_min(1.0))  # (B, C)
        return self.head(torch.cat(pooled, dim=-1))  # (B, HEAD_DIM)


def inject_hf_peft(model: nn.Module, targets: list[str], cfg: BenchConfig) -> None:
    """HF peft's LoRA on the same target layers (fused qkv stays one layer, as peft treats it)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model)


def build_model(method: str, pair: Pair, cfg: BenchConfig, device: torch.device) -> BenchModel:
    """One method's model on ``device`` through :func:`cola.harness.build_encoder`; every method starts from the same
    tower weights (seed 0)."""
    from cola.harness import build_encoder

    composed = compose_config(method, pair, cfg)
    torch.manual_seed(0)
    encoder = build_encoder(composed)
    targets = {s: list(composed.model.targets[t.family]) for s, t in encoder.towers.items()}
    if ROWS[method].hf_peft:
        for stream, tower in encoder.towers.items():
            inject_hf_peft(tower.model, targets[stream], cfg)
    torch.manual_seed(1)
    model = BenchModel(encoder).to(device)
    model.targets = targets
    model.out_splits = {s: dict(composed.model.out_splits.get(t.family) or {}) for s, t in encoder.towers.items()}
    return model


def make_inputs(pair: Pair, batch: int, device: torch.device) -> tuple[dict[str, dict], torch.Tensor]:
    """Deterministic random inputs of both towers, keyed by stream, and the head's regression target (B, HEAD_DIM)."""
    g = torch.Generator().manual_seed(1234)
    inputs_a = {"pixel_values": torch.randn(batch, 3, pair.image_size, pair.image_size, generator=g)}
    if pair.name == "vl":
        ids = torch.randint(1000, 30000, (batch, TEXT_LEN), generator=g)  # (B, L)
        lengths = [TEXT_LEN - (7 * i) % (TEXT_LEN // 2) for i in range(batch)]  # real queries vary in length
        mask = (torch.arange(TEXT_LEN)[None] < torch.tensor(lengths)[:, None]).long()  # (B, L)
        ids[:, 0] = 101  # [CLS]
        inputs_b = {"input_ids": ids * mask, "attention_mask": mask}
    else:
        inputs_b = {"input_values": torch.randn(batch, AUDIO_FRAMES, MEL_BINS, generator=g)}  # (B, T, mel)
    target = torch.randn(batch, HEAD_DIM, generator=g)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return dict(zip(pair.streams, (move(inputs_a), move(inputs_b)), strict=True)), target.to(device)


def merge_for_eval(model: nn.Module) -> None:
    """Folds every mergeable LoRA path into its base weight (ours and HF peft's)."""
    from cola.peft import merge_adapters

    merge_adapters(model)
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dev dependency
        return
    for m in model.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge()


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_mb(model: nn.Module) -> float:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
