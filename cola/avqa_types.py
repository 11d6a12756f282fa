"""The nine MUSIC-AVQA question types, shared by the data pipeline (which parses them) and the metric (which
reports accuracy per type): one place below both, so ``cola.metrics`` imports nothing from ``cola.data``.

:data:`QUESTION_TYPES` holds the (modality, type) pairs as the release writes them, in the order the official
evaluation prints them (GeWu-Lab/MUSIC-AVQA ``net_grd_avst/main_avst.py``, ``test``); :data:`TYPE_KEYS` the
metric-key names (``audio_counting``, ..., ``audiovisual_temporal``).
"""

from __future__ import annotations

__all__ = ["MODALITIES", "NUM_TYPES", "QUESTION_TYPES", "TYPE_KEYS"]

# the release's modality names -> the metric-key names (acc_audio, acc_visual, acc_audiovisual)
MODALITIES = {"Audio": "audio", "Visual": "visual", "Audio-Visual": "audiovisual"}
QUESTION_TYPES: tuple[tuple[str, str], ...] = (
    ("Audio", "Counting"),
    ("Audio", "Comparative"),
    ("Visual", "Counting"),
    ("Visual", "Location"),
    ("Audio-Visual", "Existential"),
    ("Audio-Visual", "Counting"),
    ("Audio-Visual", "Location"),
    ("Audio-Visual", "Comparative"),
    ("Audio-Visual", "Temporal"),
)
NUM_TYPES = len(QUESTION_TYPES)
TYPE_KEYS: tuple[str, ...] = tuple(f"{MODALITIES[m]}_{t.lower()}" for m, t in QUESTION_TYPES)  # audio_counting, ...
