"""Data modules (one per dataset family) and their transforms; see SPEC §7 for the layouts they read."""

from cola.data.refcoco import RefCOCODataModule, RefCOCODataset, collate_grounding
from cola.data.transforms import GroundingTransform, boxes_to_original, masks_to_original, swap_left_right

__all__ = [
    "GroundingTransform",
    "RefCOCODataModule",
    "RefCOCODataset",
    "boxes_to_original",
    "collate_grounding",
    "masks_to_original",
    "swap_left_right",
]
