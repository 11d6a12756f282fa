"""Visual grounding (REC + RES, multi-task) on the dual encoder: a vision and a text tower (docs/metrics.md#tasks).

Loss (official weighting, every weight configurable):
``loss = loss_alpha * (w_l1 * l1 + w_giou * giou) + w_focal * focal + w_dice * dice`` with ``loss_alpha = 0.1``;
the terms are defined in :mod:`cola.models.losses` (the focal loss takes logits once;
docs/official_settings.md#deliberate-differences).

Metrics (docs/metrics.md#grounding) are computed at ORIGINAL image resolution: predicted boxes and mask probabilities
are mapped back through the data's resize (letterbox or stretch) with :func:`cola.data.transforms.boxes_to_original` and
:func:`cola.data.transforms.masks_to_original`, then compared with ``orig_box`` / ``orig_mask``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cola.data.transforms import boxes_to_original, masks_to_original
from cola.dicts import check_choice
from cola.metrics import BoxAccuracy, MaskMIoU, MaskOIoU
from cola.models.heads.eevg import EEVGHead
from cola.models.heads.grounding import GroundingHead, HeadGeometry
from cola.models.losses import box_losses, dice_loss, sigmoid_focal_loss

from .base import DualStreamTask

log = logging.getLogger(__name__)

__all__ = ["GROUNDING_HEADS", "GroundingTask", "build_grounding_head", "check_head_spec"]

GROUNDING_HEADS = ("official", "fusion")
HEAD_KEYS = {
    "name", "width", "layers", "ff", "heads", "dropout", "eliminate", "eliminate_threshold", "eliminate_keep",
    "fusion_box", "fusion_mask",
}  # fmt: skip


def check_head_spec(spec: Mapping[str, Any]) -> str:
    """Checks the ``task.head`` node before anything is built; returns its name.

    Raises:
        ValueError: unknown keys, an unknown name, or elimination asked of the fusion head (naming the key).
    """
    unknown = sorted(set(spec) - HEAD_KEYS)
    if unknown:
        raise ValueError(f"task.head has unknown keys {unknown}; known: {sorted(HEAD_KEYS)}")
    name = spec.get("name")
    check_choice("task.head.name", name, GROUNDING_HEADS)
    if name == "fusion" and spec.get("eliminate"):
        raise ValueError(
            "task.head.eliminate=true needs task.head.name=official (the fusion head keeps every visual token); "
            "set task.head.eliminate=false or task.head.name=official"
        )
    return name


def build_grounding_head(spec: Mapping[str, Any], geometry: HeadGeometry) -> nn.Module:
    """The grounding head named by ``spec["name"]`` (the ``task.head`` node, configs/task/refcoco.yaml).

    ``official``: :class:`cola.models.heads.eevg.EEVGHead` (the official code's EEVG decoder, elimination per
    ``eliminate``); ``fusion``: :class:`cola.models.heads.GroundingHead` (this repo's lighter encoder head, box and
    mask heads per ``fusion_box`` / ``fusion_mask``).
    """
    name = check_head_spec(spec)
    shape = dict(width=768, layers=3, ff=1024, heads=8, dropout=0.1)
    shape.update({k: spec[k] for k in shape if k in spec})
    if name == "official":
        return EEVGHead(
            geometry,
            **shape,
            eliminate=bool(spec.get("eliminate", True)),
            eliminate_threshold=float(spec.get("eliminate_threshold", 0.015)),
            eliminate_keep=float(spec.get("eliminate_keep", 0.1)),
        )
    return GroundingHead(
        geometry,
        d_fusion=shape["width"],
        fusion_layers=shape["layers"],
        d_ff=shape["ff"],
        heads=shape["heads"],
        dropout=shape["dropout"],
        box_head=spec.get("fusion_box", "mlp"),
        mask_head=spec.get("fusion_mask", "official"),
    )


def vision_grid_size(encoder: nn.Module, image_size: int) -> int:
    """Side of the vision tower's patch grid for square inputs of side ``image_size``.

    Reads the patch size of a timm ViT (``towers["vision"].model.patch_embed.patch_size``); for other towers, embeds one
    blank image and takes the square root of the number of non-prefix tokens.
    """
    tower = encoder.towers["vision"]
    patch = getattr(getattr(getattr(tower, "model", None), "patch_embed", None), "patch_size", None)
    if patch is not None:
        p = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        return image_size // p
    param = next(tower.parameters())
    with torch.no_grad():
        tokens, _ = tower.embed({"pixel_values": param.new_zeros(1, 3, image_size, image_size)})  # (1, N, C)
    n = tokens.shape[1] - int(tower.num_prefix_tokens)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"the vision tower gives {n} patch tokens for image_size={image_size}, not a square grid; "
            "grounding needs a square patch grid"
        )
    return side


class GroundingTask(DualStreamTask):
    """REC + RES grounding: a fusion head (the official EEVG decoder or this repo's fusion encoder), a box head on
    [REG] and a mask head on the fused visual tokens.

    Args:
        encoder: a :class:`cola.models.DualEncoder` with a ``vision`` and a ``text`` tower.
        image_size: side S of the square input images (``data.image_size``).
        head: the ``task.head`` node (:func:`build_grounding_head`): ``name`` official (the EEVG decoder of the
            official code, with visual-token elimination) | fusion (this repo's lighter encoder head); ``width``,
            ``layers``, ``ff``, ``heads``, ``dropout``; ``eliminate``, ``eliminate_threshold``, ``eliminate_keep``
            (official); ``fusion_box`` mlp | spatial, ``fusion_mask`` official | conv (fusion). Default: the
            official head at the official size.
        max_query_len: the text length the data pads or cuts to (``data.max_query_len``): the official head's
            number of learned text positions.
        loss_alpha: weight of both box losses (official 0.1).
        w_l1: weight of the box L1 loss inside ``loss_alpha``.
        w_giou: weight of the box GIoU loss inside ``loss_alpha``.
        w_focal: weight of the mask sigmoid focal loss.
        w_dice: weight of the mask Dice loss.
        focal_alpha: focal-loss alpha (positive-class weight).
        focal_gamma: focal-loss gamma.
        **base_kwargs: optimisation, schedule, splits and checkpoint options of :class:`DualStreamTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        image_size: int,
        head: Mapping[str, Any] | None = None,
        max_query_len: int = 40,
        loss_alpha: float = 0.1,
        w_l1: float = 1.0,
        w_giou: float = 1.0,
        w_focal: float = 1.0,
        w_dice: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(encoder, **base_kwargs)
        self.image_size = int(image_size)
        self.loss_alpha = loss_alpha
        self.w_l1, self.w_giou, self.w_focal, self.w_dice = w_l1, w_giou, w_focal, w_dice
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.head_name = str((head or {}).get("name", "official"))
        geometry = HeadGeometry(
            vision_dim=encoder.towers["vision"].hidden_size,
            text_dim=encoder.towers["text"].hidden_size,
            num_prefix_tokens=int(encoder.towers["vision"].num_prefix_tokens),
            grid_size=vision_grid_size(encoder, self.image_size),
            image_size=self.image_size,
            max_text_len=int(max_query_len),
        )
        self.head = build_grounding_head(dict(head or {"name": "official"}), geometry)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Runs the dual encoder and the heads.

        Args:
            batch: the RefCOCO batch dict (``pixel_values`` (B, 3, S, S), ``input_ids`` and ``attention_mask``
                (B, L), ...).

        Returns:
            ``box`` (B, 4) normalised (cx, cy, w, h) in the input frame; ``mask_logits`` (B, S, S).
        """
        pixels = batch["pixel_values"]
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            raise ValueError(
                f"pixel_values are {tuple(pixels.shape[-2:])}, but the task was built for image_size="
                f"{self.image_size}; set task.module.image_size to the data's image_size"
            )
        enc = self.encoder(self.encoder_inputs(batch))
        if enc.num_prefix["vision"] != self.head.num_prefix_tokens:
            raise ValueError(
                f"the encoder returned {enc.num_prefix['vision']} vision prefix tokens, the head expects "
                f"{self.head.num_prefix_tokens}"
            )
        return self.head(
            enc.tokens["vision"], enc.tokens["text"], enc.masks["text"]
        )  # box (B, 4), mask_logits (B, S, S)

    def encoder_inputs(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Vision and text inputs of a batch, by stream."""
        return {
            "vision": {"pixel_values": batch["pixel_values"]},
            "text": {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
        }

    def compute_loss(
        self, out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the box and mask losses; returns (loss, unweighted terms)."""
        terms = box_losses(out["box"], batch["box"])
        terms["focal"] = sigmoid_focal_loss(
            out["mask_logits"], batch["mask"], alpha=self.focal_alpha, gamma=self.focal_gamma
        )
        terms["dice"] = dice_loss(out["mask_logits"], batch["mask"])
        loss = (
            self.loss_alpha * (self.w_l1 * terms["l1"] + self.w_giou * terms["giou"])
            + self.w_focal * terms["focal"]
            + self.w_dice * terms["dice"]
        )
        return loss, {k: v.detach() for k, v in terms.items()}

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"acc@0.5": BoxAccuracy(), "miou": MaskMIoU(), "oiou": MaskOIoU()}

    def update_metrics(
        self, metrics: dict[str, nn.Module], out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> None:
        """Maps predictions back to each image's original resolution and updates the metrics there."""
        pred_boxes = boxes_to_original(out["box"].detach().float(), batch["meta"])  # (B, 4) xyxy pixels, clipped
        metrics["acc@0.5"].update(pred_boxes, batch["orig_box"].to(pred_boxes))
        probs = masks_to_original(out["mask_logits"].detach().float().sigmoid(), batch["meta"])  # [(H_i, W_i)]
        targets = [t.to(p.device) for p, t in zip(probs, batch["orig_mask"], strict=True)]
        # original sizes differ between samples: the mask metrics take lists of (H_i, W_i) masks
        metrics["miou"].update(probs, targets)
        metrics["oiou"].update(probs, targets)
