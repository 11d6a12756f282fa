"""What one benchmark run measures: :class:`BenchConfig` (the command line's options, checked) and the method list.

The methods are asked from the method registry (:data:`cola.peft.METHODS`), expanded by what a cost comparison
needs beyond it: HF peft's LoRA next to ours, CoLA's sharing variants (:data:`cola.peft.SHARING_CHOICES`) and
the intra variants (:data:`cola.peft.INTRA_VARIANTS`) for LoRA and CoLA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cola.peft import INTRA_VARIANTS, SHARING_CHOICES
from cola.peft import METHODS as PEFT_METHODS

PAIRS = ("vl", "av")
INTRA = tuple(v for v in INTRA_VARIANTS if v != "lora")
"""Intra-path variants (``peft.intra``, docs/method.md#intra-path-variants; every one but plain LoRA, which is the
``lora`` row): method ``<v>`` is our LoRA with that variant, ``cola_<v>`` CoLA over it (sharing none)."""
COLA_SHARING = {"cola": "none", **{f"cola_{s}": s for s in SHARING_CHOICES if s != "none"}}
"""CoLA rows by ``peft.sharing`` (paper Fig. 4)."""


def _methods() -> tuple[str, ...]:
    """Every registry method whose towers stay frozen (``full`` trains every tower weight: not an adapter's cost),
    the injection-free floor first; ``lora`` is followed by HF peft's, ``cola`` by its sharing variants; then
    the intra variants, ours and CoLA over them."""
    names: list[str] = []
    for name, method in sorted(PEFT_METHODS.items(), key=lambda kv: kv[1].injects):  # stable: registry order
        if method.trains_towers:
            continue
        names.append(name)
        if name == "lora":
            names.append("peft_lora")
        if name == "cola":
            names.extend(m for m in COLA_SHARING if m != "cola")
    return (*names, *INTRA, *(f"cola_{v}" for v in INTRA))


METHODS = _methods()
REPORTED_METHODS = ("frozen", "lora", "peft_lora", "lora_param_matched", "cola", "moka")
"""The methods every report names (README.md#performance) and ``--tiny`` runs by default: the floor, both LoRAs,
LoRA at CoLA's parameter count (the fair memory comparison), CoLA and MokA."""
OPTIMIZERS = ("default", "foreach", "fused")
DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")


@dataclass
class BenchConfig:
    """The options of ``scripts/benchmark.py`` (one field per flag; ``--lora-split-fused`` is ``lora_split_fused``).

    Attributes:
        pair: ``vl`` (DINOv2-B/14 @ 448 + BERT-B) or ``av`` (DINOv2-B/14 @ 224 + AST-B).
        tiny: tiny towers (192 wide, 4 blocks, 112 px).
        methods: methods to run, of :data:`METHODS`; ``None``: :data:`REPORTED_METHODS` with ``tiny``, else all.
        device: ``cpu`` | ``cuda``.
        dtype: ``fp32`` | ``bf16`` | ``fp16`` (autocast; weights stay fp32; fp16 with a GradScaler).
        compile: ``torch.compile`` the model (the warm-up includes compilation).
        batch: batch size(s), measured interleaved in one run; sorted, duplicates dropped.
        rank: adapter rank.
        alpha: intra-path alpha; ``None``: rank / 2, as ``rank=R`` in train.py.
        lora_split_fused: our LoRA with per-slice q/k/v adapters on fused qkv (official); else one A/B as HF peft.
        steps: timed steps per method and batch size (median reported).
        warmup: untimed rounds first.
        threads: ``torch.set_num_threads``; ``None``: torch's choice.
        optimizer: AdamW implementation: ``fused`` (as cola.tasks), ``default`` or ``foreach``.
        gradient_checkpointing: recompute tower blocks in backward.
        no_memory: skip the memory probes (``peak_mem_mb`` null).
        json: where to write the JSON report.
        plot: PNG of each ratio against the batch size (default with ``json`` and several batch sizes: beside it).

    Raises:
        ValueError: a value out of range, naming the flag, the value and the choices.
    """

    pair: str = "vl"
    tiny: bool = False
    methods: list[str] | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    compile: bool = False
    batch: list[int] = field(default_factory=lambda: [2])
    rank: int = 8
    alpha: float | None = None
    lora_split_fused: bool = False
    steps: int = 20
    warmup: int = 3
    threads: int | None = None
    optimizer: str = "fused"
    gradient_checkpointing: bool = False
    no_memory: bool = False
    json: Path | None = None
    plot: Path | None = None

    def __post_init__(self) -> None:
        for name, choices in (("pair", PAIRS), ("device", DEVICES), ("dtype", DTYPES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("rank", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if isinstance(self.batch, int):
            self.batch = [self.batch]
        bad = [b for b in self.batch if b < 1]
        if bad or not self.batch:
            raise ValueError(f"--batch must be positive integers, got {bad or self.batch}")
        self.batch = sorted(set(self.batch))
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {self.threads}")
        if self.alpha is None:
            self.alpha = self.rank / 2
        if self.methods is None:  # --tiny: the reported methods only, so that the quick check stays near a minute
            self.methods = list(REPORTED_METHODS if self.tiny else METHODS)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods must be among {list(METHODS)}, got {unknown}")
        self.methods = list(dict.fromkeys(self.methods))  # order kept, duplicates dropped
        self.json = None if self.json is None else Path(self.json)
        self.plot = None if self.plot is None else Path(self.plot)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (paths as strings): how the memory helper receives the run."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
