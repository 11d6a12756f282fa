"""Task heads on top of the dual encoder."""

from .grounding import GroundingHead, MaskDecoder

__all__ = ["GroundingHead", "MaskDecoder"]
