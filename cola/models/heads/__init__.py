"""Task heads on top of the dual encoder."""

from .av import AVEHead, AVSMaskDecoder, pool_stream
from .grounding import GroundingHead, MaskDecoder

__all__ = ["AVEHead", "AVSMaskDecoder", "GroundingHead", "MaskDecoder", "pool_stream"]
