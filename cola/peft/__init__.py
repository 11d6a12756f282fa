"""CoLA's method library: adapter layers, the method registry, injection and adapter state. Imports torch only
(tested).

h = W0 x + b + (alpha / r) B_L A_L drop(x) + lambda B_C Phi(c) A_C drop(x)

Every method is a :class:`Method` in :data:`METHODS`; :func:`build_peft` parses a ``peft`` config node.
"""

from .config import (
    CONDITION_CHOICES,
    POOLING_CHOICES,
    PROPAGATION_CHOICES,
    SHARING_CHOICES,
    STREAMS,
    AdapterConfig,
    CoLAConfig,
    LoRAConfig,
    per_stream,
)
from .hypernet import HyperNetwork, stacked_hypernet_forward
from .inject import (
    InjectionReport,
    adapter_layers,
    adapter_params_per_layer,
    count_parameters,
    find_targets,
    inject_adapters,
    is_adapter_param,
    mark_only_adapters_trainable,
    merge_adapters,
    unmerge_adapters,
)
from .layers import AdapterLinear, CoLALinear, LoRALinear, LowRankLinear
from .methods import (
    ADAPTER_LAYERS,
    ADAPTER_PREFIXES,
    METHODS,
    MatchedLoRA,
    Method,
    ParamMatchedConfig,
    PeftSpec,
    build_peft,
    config_from_dict,
    get_method,
    layer_for,
    match_lora,
    param_matched_lora_rank,
)
from .moka import MoKAConfig, MoKALinear
from .state import (
    adapter_state_dict,
    atomic_replace,
    diff_configs,
    load_adapter_state_dict,
    load_adapters,
    read_adapters,
    save_adapters,
    upgrade_state_keys,
)

__all__ = [
    "ADAPTER_LAYERS",
    "ADAPTER_PREFIXES",
    "CONDITION_CHOICES",
    "METHODS",
    "POOLING_CHOICES",
    "PROPAGATION_CHOICES",
    "SHARING_CHOICES",
    "STREAMS",
    "AdapterConfig",
    "AdapterLinear",
    "CoLAConfig",
    "CoLALinear",
    "HyperNetwork",
    "InjectionReport",
    "LoRAConfig",
    "LoRALinear",
    "LowRankLinear",
    "MatchedLoRA",
    "MoKAConfig",
    "MoKALinear",
    "Method",
    "ParamMatchedConfig",
    "PeftSpec",
    "adapter_layers",
    "adapter_params_per_layer",
    "adapter_state_dict",
    "atomic_replace",
    "build_peft",
    "config_from_dict",
    "count_parameters",
    "diff_configs",
    "find_targets",
    "get_method",
    "inject_adapters",
    "is_adapter_param",
    "layer_for",
    "load_adapter_state_dict",
    "load_adapters",
    "mark_only_adapters_trainable",
    "match_lora",
    "merge_adapters",
    "param_matched_lora_rank",
    "per_stream",
    "read_adapters",
    "save_adapters",
    "stacked_hypernet_forward",
    "unmerge_adapters",
    "upgrade_state_keys",
]
