"""Metrics of docs/metrics.md as ``torchmetrics.Metric`` subclasses (logged as ``<split>/<name>``).

| task | key | class | ``update`` inputs |
|---|---|---|---|
| grounding | ``acc@0.5`` | :class:`BoxAccuracy` | (B, 4) xyxy predicted / target boxes (predictions clipped) |
| grounding | ``miou`` | :class:`MaskMIoU` | (B, H, W) probabilities + 0/1 target, or lists of (H_i, W_i) |
| grounding | ``oiou`` | :class:`MaskOIoU` | same as ``miou`` |
| AVE | ``acc`` | :class:`SegmentAccuracy` | (B, T, C) logits + (B, T) class indices |
| AVS | ``miou`` | :class:`AVSMIoU` | (V, F, H, W) logits + 0/1 masks, optional (V, F) frame mask |
| AVS | ``fscore`` | :class:`AVSFScore` | same as AVS ``miou`` |
| AVQA | ``acc``, ``acc_<modality>[_<type>]`` | :class:`AVQAAccuracy` | (B, A) scores, (B,) answers, (B,) question types |

AVE ``acc`` is torchmetrics' ``MulticlassAccuracy(num_classes=29, average="micro")`` on (B * T, C) logits and
(B * T,) targets; :class:`SegmentAccuracy` is that metric taking the (B, T, C) layout directly. All results are
independent of batching and reduce under DDP (sum states). The box helpers come from :mod:`cola.boxes`.
"""

from cola.boxes import (  # the box helpers, shared with cola.data (re-exported for existing imports)
    box_cxcywh_to_xyxy,
    box_iou_xyxy,
    box_xyxy_to_cxcywh,
    clip_boxes_xyxy,
    generalized_box_iou_xyxy,
)

from .avqa import AVQA_KEYS, AVQAAccuracy, avqa_metrics
from .avs import AVSFScore, AVSMIoU
from .classification import SegmentAccuracy
from .grounding import BoxAccuracy, MaskMIoU, MaskOIoU

__all__ = [
    "AVQA_KEYS",
    "AVQAAccuracy",
    "AVSFScore",
    "AVSMIoU",
    "BoxAccuracy",
    "MaskMIoU",
    "MaskOIoU",
    "SegmentAccuracy",
    "avqa_metrics",
    "box_cxcywh_to_xyxy",
    "box_iou_xyxy",
    "box_xyxy_to_cxcywh",
    "clip_boxes_xyxy",
    "generalized_box_iou_xyxy",
]
