"""One LightningModule per task family, all on :class:`DualStreamTask` (optimiser groups, metrics, lean checkpoints)."""

from .av_classification import AVEClassificationTask
from .av_segmentation import AVSSegmentationTask
from .base import DualStreamTask, NonFiniteLossError
from .grounding import GroundingTask

__all__ = ["AVEClassificationTask", "AVSSegmentationTask", "DualStreamTask", "GroundingTask", "NonFiniteLossError"]
