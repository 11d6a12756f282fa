"""Metrics torchmetrics lacks, as ``torchmetrics.Metric`` subclasses (SPEC §8).

Grounding: :class:`BoxAccuracy` (``acc@0.5``), :class:`MaskMIoU` (``miou``), :class:`MaskOIoU` (``oiou``).
AVS: :class:`AVSMIoU` (``miou``), :class:`AVSFScore` (``fscore``). AVE ``acc`` is torchmetrics'
``MulticlassAccuracy(num_classes=29, average="micro")`` over all seconds.
"""

from .avs import AVSFScore, AVSMIoU
from .grounding import (
    BoxAccuracy,
    MaskMIoU,
    MaskOIoU,
    box_cxcywh_to_xyxy,
    box_iou_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou_xyxy,
)

__all__ = [
    "AVSFScore",
    "AVSMIoU",
    "BoxAccuracy",
    "MaskMIoU",
    "MaskOIoU",
    "box_cxcywh_to_xyxy",
    "box_iou_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou_xyxy",
]
