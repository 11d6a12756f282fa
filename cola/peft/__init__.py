"""CoLA's method library: adapter layers, injection and adapter state. Imports torch only (tested).

h = W0 x + b + (alpha / r) B_L A_L drop(x) + lambda B_C Phi(c) A_C drop(x)
"""

from .config import (
    CONDITION_CHOICES,
    POOLING_CHOICES,
    PROPAGATION_CHOICES,
    SHARING_CHOICES,
    CoLAConfig,
    LoRAConfig,
    MoKAConfig,
)
from .context import clear_conditions, set_conditions
from .hypernet import HyperNetwork, stacked_hypernet_forward
from .inject import (
    InjectionReport,
    adapter_layers,
    adapter_params_per_layer,
    config_from_dict,
    count_parameters,
    find_targets,
    inject_adapters,
    is_adapter_param,
    mark_only_adapters_trainable,
    merge_adapters,
    param_matched_lora_rank,
    unmerge_adapters,
)
from .layers import ADAPTER_LAYERS, ADAPTER_PREFIXES, AdapterLinear, CoLALinear, LoRALinear, MoKALinear
from .state import adapter_state_dict, load_adapter_state_dict, load_adapters, read_adapters, save_adapters

__all__ = [
    "ADAPTER_LAYERS",
    "ADAPTER_PREFIXES",
    "CONDITION_CHOICES",
    "POOLING_CHOICES",
    "PROPAGATION_CHOICES",
    "SHARING_CHOICES",
    "AdapterLinear",
    "CoLAConfig",
    "CoLALinear",
    "HyperNetwork",
    "InjectionReport",
    "LoRAConfig",
    "LoRALinear",
    "MoKAConfig",
    "MoKALinear",
    "adapter_layers",
    "adapter_params_per_layer",
    "adapter_state_dict",
    "clear_conditions",
    "config_from_dict",
    "count_parameters",
    "find_targets",
    "inject_adapters",
    "is_adapter_param",
    "load_adapter_state_dict",
    "load_adapters",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "param_matched_lora_rank",
    "read_adapters",
    "save_adapters",
    "set_conditions",
    "stacked_hypernet_forward",
    "unmerge_adapters",
]
