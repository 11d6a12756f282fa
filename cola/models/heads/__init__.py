"""Task heads on top of the dual encoder."""

from .av import AVEHead, AVSMaskDecoder, pool_stream
from .avqa import AVQAHead, pool_text
from .grounding import GroundingHead, HeadGeometry, MaskDecoder

__all__ = [
    "AVEHead",
    "AVQAHead",
    "AVSMaskDecoder",
    "GroundingHead",
    "HeadGeometry",
    "MaskDecoder",
    "pool_stream",
    "pool_text",
]
