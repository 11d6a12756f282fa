"""Data modules (one per dataset family) and their transforms; see docs/data.md for the layouts they read."""

from cola.data.audio import AudioReadError, audio_clip_features, kaldi_fbank, load_audio
from cola.data.ave import AVE_CATEGORIES, NUM_CLASSES, AVEDataModule, AVEDataset, parse_annotations, segment_labels
from cola.data.avs import AVSDataModule, AVSDataset
from cola.data.base import CoLADataModule
from cola.data.refcoco import RefCOCODataModule, RefCOCODataset, collate_grounding
from cola.data.transforms import GroundingTransform, boxes_to_original, masks_to_original, swap_left_right

__all__ = [
    "AVE_CATEGORIES",
    "NUM_CLASSES",
    "AVEDataModule",
    "AVEDataset",
    "AVSDataModule",
    "AVSDataset",
    "AudioReadError",
    "CoLADataModule",
    "GroundingTransform",
    "RefCOCODataModule",
    "RefCOCODataset",
    "audio_clip_features",
    "boxes_to_original",
    "collate_grounding",
    "kaldi_fbank",
    "load_audio",
    "masks_to_original",
    "parse_annotations",
    "segment_labels",
    "swap_left_right",
]
