"""What one benchmark run measures: :class:`BenchConfig` (the command line's options, checked) and the methods.

The methods (:data:`ROWS`) are asked from the method registry (:data:`cola.peft.METHODS`): one row per method whose
towers stay frozen, expanded by what a cost comparison needs beyond it: HF peft's LoRA next to the paper's reference
(:data:`cola.peft.REFERENCE_METHOD`), a row per ``peft.sharing`` value of a method whose config has one (CoLA's,
:data:`cola.peft.SHARING_CHOICES`) and the intra variants (:data:`cola.peft.INTRA_VARIANTS`) over both methods of
the paper's comparison (:data:`cola.peft.PAPER_COMPARISON`). A new registry method gets its row with no edit here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cola.peft import INTRA_VARIANTS, PAPER_METHOD, REFERENCE_METHOD, SHARING_CHOICES, Method
from cola.peft import METHODS as PEFT_METHODS

PAIRS = ("vl", "av")
INTRA = tuple(name for name, v in INTRA_VARIANTS.items() if not v.plain)
"""Intra-path variants (``peft.intra``, docs/method.md#intra-path-variants; every one but the plain one, which is the
reference's own row): method ``<v>`` is our LoRA with that variant, ``cola_<v>`` CoLA over it (sharing none)."""
VARIANT_ROWS = {REFERENCE_METHOD: "{variant}", PAPER_METHOD: "{method}_{variant}"}
"""The methods the intra variants run over (the paper's comparison) and the names of their rows (:func:`variant_row`)."""
HF_PEFT = "peft_lora"
"""The row of HF peft's LoRA (its ``LoraConfig`` injected into the frozen towers), the paper reference's twin."""


def own_fields(method: Method) -> dict[str, Any]:
    """The ``peft`` fields that set ``method``'s own layers and their defaults: its layer config's, none when the node
    describes another run (``parses_as``: ``lora_param_matched`` describes the CoLA run it matches and keeps its
    defaults, per-slice A/B and sharing none) or when nothing is injected."""
    if method.parses_as is not None or method.config is None:
        return {}
    return {f.name: f.default for f in fields(method.config)}


def variant_row(method: str, intra: str) -> str:
    """The row of ``method`` (of :data:`VARIANT_ROWS`) over intra variant ``intra``: ``dora`` (our LoRA with DoRA),
    ``cola_dora`` (CoLA over it)."""
    return VARIANT_ROWS[method].format(method=method, variant=intra)


@dataclass(frozen=True)
class Row:
    """One benchmark method: the registry method it composes and what it sets on top (:func:`method_overrides
    <cola.bench.models.method_overrides>`: ``peft=<peft>``, the run's rank and alpha, no dropout).

    Attributes:
        name: the row's name (``--methods``, the report's ``method``).
        peft: the registry method composed (:data:`cola.peft.METHODS`).
        sharing: ``peft.sharing`` set on the row (every value of a method whose layers have the field); ``None``:
            not set.
        intra: ``peft.intra`` set on the row (a variant other than the plain one); ``None``: not set.
        hf_peft: HF peft's LoRA is injected into the towers of the composed (frozen) encoder.
    """

    name: str
    peft: str
    sharing: str | None = None
    intra: str | None = None
    hf_peft: bool = False

    @property
    def method(self) -> Method:
        """The registry method the row composes."""
        return PEFT_METHODS[self.peft]

    @property
    def floor(self) -> bool:
        """Whether the row is the injection-free floor: the frozen towers, nothing injected (HF peft's LoRA neither)."""
        return self.method.frozen and not self.hf_peft

    @property
    def fused_layout(self) -> bool:
        """Whether its layout on fused layers is the run's ``--lora-split-fused`` (its layers have ``split_fused``)."""
        return "split_fused" in own_fields(self.method)


def _rows() -> dict[str, Row]:
    """Every registry method whose towers stay frozen (``full`` trains every tower weight: not an adapter's cost),
    the injection-free floor first; the paper's reference is followed by HF peft's LoRA, a method with
    ``peft.sharing`` by a row per other sharing; then the intra variants over the reference and the paper's method."""
    floor = next(name for name, m in PEFT_METHODS.items() if m.frozen)
    rows: list[Row] = []
    for name, method in sorted(PEFT_METHODS.items(), key=lambda kv: kv[1].injects):  # stable: registry order
        if method.trains_towers:
            continue
        sharing = own_fields(method).get("sharing")  # the default sharing: the method's own row
        rows.append(Row(name, name, sharing=sharing))
        if name == REFERENCE_METHOD:
            rows.append(Row(HF_PEFT, floor, hf_peft=True))
        if sharing is not None:
            rows += [Row(f"{name}_{s}", name, sharing=s) for s in SHARING_CHOICES if s != sharing]
    by_name = {r.name: r for r in rows}
    rows += [replace(by_name[m], name=variant_row(m, v), intra=v) for m in VARIANT_ROWS for v in INTRA]
    return {r.name: r for r in rows}


ROWS = _rows()
"""Every benchmark method by name, in run order."""
METHODS = tuple(ROWS)
FLOOR = next(r.name for r in ROWS.values() if r.floor)
"""The injection-free floor (the frozen towers): what every method's cost adds to."""
SHARING_ROWS = {r.name: r.sharing for r in ROWS.values() if r.sharing is not None and r.intra is None}
"""The rows of every ``peft.sharing`` value (CoLA's, paper Fig. 4): row -> sharing."""
MATCHED = next((r.name for r in ROWS.values() if r.method.derive is not None), None)
"""The row of the LoRA derived to CoLA's parameter count (``lora_param_matched``: the comparison at equal
optimiser state); ``None``: no registry method derives one."""
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
