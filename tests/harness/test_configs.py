"""Every option of every config group composes; shorthands write into peft; experiments are complete sweeps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cola.peft import METHODS
from cola.validation import SetupError, validate_config
from tests.conftest import CONFIG_DIR, compose_cfg, resolve_all

GROUPS = ["task", "model", "peft", "sharing", "propagation", "targets", "trainer", "logger", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_peft_folder_is_the_method_registry():
    """configs/peft/ holds one file per registered method, named after it, whose node parses (instantiate, as the
    harness does) into that method: the folder and cola.peft.METHODS are one list, typed nowhere else."""
    from cola.peft import METHODS, PeftSpec

    assert set(_options("peft")) == set(METHODS)
    assert {"cola", "lora", "lora_param_matched", "moka", "frozen", "full"} <= set(METHODS)  # docs/method.md#baselines
    for name in METHODS:
        cfg = compose_cfg([f"peft={name}"], tiny=False)
        spec = instantiate(cfg.peft, _convert_="all")
        assert isinstance(spec, PeftSpec) and spec.method is METHODS[name]
        assert spec.to_dict() == {k: v for k, v in resolve_all(cfg)["peft"].items() if k != "_target_"}
    comment = next(line for line in (Path(CONFIG_DIR) / "train.yaml").read_text().splitlines() if "- peft:" in line)
    assert not any(f" {name} " in f" {comment} " for name in METHODS if name != "cola"), comment  # no typed list


def test_groups_have_the_spec_options():
    assert set(_options("sharing")) == {"none", "shared_a", "shared_b", "full"}
    assert set(_options("propagation")) == {"uniform", "module_wise", "progressive"}
    assert set(_options("trainer")) == {"cpu", "gpu", "ddp"}
    assert set(_options("logger")) == {"csv", "wandb", "none"}
    assert {"refcoco", "refcoco+", "refcocog", "ave", "avs_s4", "avs_ms3"} <= set(_options("task"))
    assert {"tiny", "dinov2_bert", "dinov2_ast"} <= set(_options("model"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_cfg([f"{group}={option}"], tiny=False)
    container = resolve_all(cfg)
    assert container["peft"]["method"] in METHODS
    if group in ("sharing", "propagation"):
        assert cfg.peft[group] == option
    if cfg.model.get(cfg.task.modality) is not None:  # the paper's towers pair with their own tasks only
        validate_config(cfg)


# sources=... (three towers): what each shorthand writes into peft.condition_sources, and the sources every stream's
# layers then take (cola.models.lockstep.resolve_sources: null or a stream left out = every other stream)
SOURCES = {
    "all": (None, {"vision": ["audio", "text"], "audio": ["vision", "text"], "text": ["vision", "audio"]}),
    "no_text": (
        {"vision": ["audio"], "audio": ["vision"]},
        {"vision": ["audio"], "audio": ["vision"], "text": ["vision", "audio"]},
    ),
    "text_only": (
        {"vision": ["text"], "audio": ["text"]},
        {"vision": ["text"], "audio": ["text"], "text": ["vision", "audio"]},
    ),
}


@pytest.mark.parametrize("option", SOURCES)
@pytest.mark.parametrize(
    "base", [["task=avqa"], ["task=avqa", "peft=lora_param_matched"], ["experiment=ablation_streams"]]
)
def test_sources_shorthand_writes_condition_sources(option, base):
    from cola.models.lockstep import resolve_sources

    written, taken = SOURCES[option]
    assert set(SOURCES) == set(_options("sources"))
    cfg = compose_cfg([*base, f"sources={option}"], tiny=False)
    assert cfg.hydra.runtime.choices.sources == option
    resolved = resolve_all(cfg)
    assert resolved["peft"]["condition_sources"] == written  # after the peft group, whichever method file is picked
    streams = list(resolved["task"]["streams"])
    assert streams == ["vision", "audio", "text"]
    assert resolve_sources(streams, resolved["peft"]["condition_sources"], exchange="condition", anchor=None) == taken
    validate_config(cfg)


@pytest.mark.parametrize("launcher", ["basic", "submitit_local", "submitit_slurm"])
def test_launchers_compose(launcher):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], tiny=False)
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_is_a_sweep_that_composes(experiment):
    cfg = compose_cfg([f"experiment={experiment}"], tiny=False)
    params = cfg.hydra.sweeper.params
    assert "seed" in params and params.seed == "0,1,2"
    # every sweep point composes too, and each swept value reaches the job's config (a group's choice or a key)
    sweep = {k: str(v).split(",") for k, v in params.items()}
    first = [f"{k}={v[0]}" for k, v in sweep.items()]
    last = [f"{k}={v[-1]}" for k, v in sweep.items()]
    for point in (first, last):
        job = compose_cfg([f"experiment={experiment}", *point], tiny=False)
        resolve_all(job)
        choices = job.hydra.runtime.choices
        for override in point:
            key, value = override.split("=", 1)
            got = choices[key] if key in choices else OmegaConf.select(job, key, throw_on_missing=True)
            assert str(got) == value, f"{experiment}: {override} composed to {key}={got!r}"
    header = (Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml").read_text().splitlines()[1:4]
    assert any("GPU-hours" in line for line in header), "each experiment says its expected compute"


@pytest.mark.parametrize("experiment", ["main_refcoco", "main_avs_s4"])
def test_debug_fast_switches_experiments_to_tiny_cpu(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "debug=fast"], tiny=False)
    assert cfg.model.name == "tiny" and cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps == 1
    # one CPU process in fp32, whatever devices / strategy / precision the official settings ask for
    assert cfg.trainer.devices == 1 and cfg.trainer.strategy == "auto" and cfg.trainer.precision == "32-true"
    assert (
        compose_cfg(["experiment=main_refcoco", "debug=fast", "model=dinov2_bert"], tiny=False).model.name
        == "dinov2_bert"
    )


# data keys a DataModule keeps under another attribute name (`dataset` is CoLADataModule's split accessor)
DATA_KEY_ATTRIBUTES = {"dataset": "dataset_name", "tokenizer": "tokenizer_name"}


def _plain(value):
    """The YAML form of an attribute: paths as strings, tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def assert_data_keys_reached(dm, data: DictConfig) -> None:
    """``dm`` is the class ``data._target_`` names and holds every key of ``data`` as an attribute (of ``dm``, or of
    its ``inputs``) with the configured value. Null keys are skipped: the DataModule derives their value (image_dir from root, audio_windows
    from audio_input)."""
    from cola.data.augment import AugmentConfig

    values = OmegaConf.to_container(data, resolve=True)
    assert f"{type(dm).__module__}.{type(dm).__qualname__}" == values.pop("_target_")
    for key, value in values.items():
        if value is None:
            continue
        attr = DATA_KEY_ATTRIBUTES.get(key, key)
        # the AV modules hold their image and audio settings in one AVInputs (cola.data.av), ``dm.inputs``
        holder = dm.inputs if not hasattr(dm, attr) and hasattr(getattr(dm, "inputs", None), attr) else dm
        assert hasattr(holder, attr), f"data.{key} did not reach {type(dm).__name__} (no attribute {attr!r})"
        got = getattr(holder, attr)
        if key == "augment" and isinstance(value, str):  # a preset's name: the DataModule holds that preset
            value = AugmentConfig.from_dict(value)
        assert _plain(got) == _plain(value), f"data.{key}: {value!r} in the config, {got!r} on {type(dm).__name__}"


@pytest.mark.parametrize("task", ["refcoco", "refcoco+", "refcocog", "ave", "avs_s4", "avs_ms3", "avqa"])
def test_task_datamodules_instantiate(task, tmp_path):
    cfg = compose_cfg([f"task={task}", f"data.root={tmp_path}", "data.batch_size=3", "data.limit_per_split=5"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.batch_size == 3 and dm.limit_per_split == 5 and dm.root == tmp_path  # the overrides, not the defaults
    assert_data_keys_reached(dm, cfg.data)


def test_tiny_model_instantiates_towers():
    cfg = compose_cfg([])
    vision = instantiate(cfg.model.vision)
    text = instantiate(cfg.model.text)
    audio = instantiate(cfg.model.audio)
    assert vision.depth == text.depth == audio.depth == 2


def test_default_run_is_the_demo():
    cfg = compose_cfg([], tiny=False)
    assert cfg.task.name == "refcoco" and cfg.model.name == "tiny" and cfg.peft.method == "cola"
    assert cfg.data.root is None and cfg.hydra.job.chdir is False
    assert "outputs/refcoco/runs/" in cfg.hydra.run.dir and "outputs/refcoco/multiruns/" in cfg.hydra.sweep.dir


def test_validation_errors_are_one_paragraph():
    with pytest.raises(SetupError, match=r"runs the towers \[.vision., .audio.\], but model dinov2_bert"):
        validate_config(compose_cfg(["task=ave", "model=dinov2_bert"], tiny=False))
    with pytest.raises(SetupError, match="peft: rank must be a positive integer, got 0"):
        validate_config(compose_cfg(["peft.rank=0"], tiny=False))
    with pytest.raises(SetupError, match=r"peft: sharing must be one of \['full', 'none', 'shared_a', 'shared_b'\]"):
        validate_config(compose_cfg(["peft.sharing=shard"], tiny=False))
    with pytest.raises(SetupError, match="no W&B credentials"):
        import os

        env = os.environ.pop("WANDB_API_KEY", None)
        try:
            validate_config(compose_cfg(["logger=wandb", "logger.wandb.offline=false"], tiny=False))
        finally:
            if env is not None:
                os.environ["WANDB_API_KEY"] = env


@pytest.mark.parametrize(
    ("overrides", "monitor"),
    [
        (["task=ave"], "val/acc"),
        (["experiment=main_ave"], "test/acc"),  # official AV model selection on test: the monitor follows
        (["experiment=main_avs_s4"], "test/miou"),
        (["task=avs_ms3", "data.select_on=test"], "test/miou"),
        (["experiment=main_refcoco"], "val/acc@0.5"),
    ],
)
def test_monitor_names_the_split_the_validation_loader_runs_on(overrides, monitor):
    cfg = compose_cfg(overrides, tiny=False)
    assert cfg.task.monitor == monitor and cfg.callbacks.model_checkpoint.monitor == monitor


@pytest.mark.parametrize("rank", [1, 4, 8, 12, 16, 33])
def test_rank_sets_rank_and_half_alpha_for_every_method(rank):
    for method in [n for n, m in METHODS.items() if m.injects]:
        cfg = compose_cfg([f"peft={method}", f"rank={rank}"], tiny=False)
        assert cfg.peft.rank == rank and cfg.peft.alpha == rank / 2


@pytest.mark.parametrize("rank", [-3, 0, "abc", 2.5])
def test_bad_rank_is_one_clear_error(rank):
    with pytest.raises(SetupError, match=rf"rank must be a positive integer .*got {rank!r}"):
        validate_config(compose_cfg([f"rank={rank}"], tiny=False))


def test_rank_wins_over_the_experiment_files():
    """ablation_rank sweeps rank: each job gets its rank (the experiment's official r 16 used to override it)."""
    for rank in (4, 8, 16, 32, 64):
        for method in ("lora", "cola"):
            cfg = compose_cfg(["experiment=ablation_rank", f"peft={method}", f"rank={rank}"], tiny=False)
            assert cfg.peft.rank == rank and cfg.peft.alpha == rank / 2
    assert compose_cfg(["experiment=main_avs_s4", "peft=lora"], tiny=False).peft.alpha == 84
    assert compose_cfg(["experiment=main_avs_s4", "peft=lora", "rank=8"], tiny=False).peft.alpha == 4


# The adapted layers each targets option gave when every model and targets file listed them by hand: the families
# now own the names (cola.models.block_steps) and the targets files pick stages, with the same result.
VIT = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
BERT = [f"attention.self.{n}" for n in ("query", "key", "value")] + ["attention.output.dense"]
BERT += ["intermediate.dense", "output.dense"]
AST = ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"]
TARGETS_BEFORE = {
    "all": {"vit": VIT, "bert": BERT, "ast": AST},
    "attention": {"vit": VIT[:2], "bert": BERT[:4], "ast": AST[:4]},
    "ffn": {"vit": VIT[2:], "bert": BERT[4:], "ast": AST[4:]},
}


@pytest.mark.parametrize("model", ["tiny", "dinov2_bert", "dinov2_ast"])
@pytest.mark.parametrize("targets", [None, "all", "attention", "ffn"])
def test_targets_select_the_same_layers_for_every_family(model, targets):
    from cola.models import family_targets

    cfg = compose_cfg([f"model={model}"] + ([f"targets={targets}"] if targets else []), tiny=False)
    model_cfg = resolve_all(cfg)["model"]
    expected = TARGETS_BEFORE[targets or "all"]
    for family in ("vit", "bert", "ast"):
        assert model_cfg["targets"][family] == expected[family]
        assert family_targets(family, model_cfg["target_stages"]) == expected[family]
    assert model_cfg["out_splits"] == {"vit": {"attn.qkv": 3}}


def test_one_family_list_can_still_be_set_by_hand():
    cfg = compose_cfg(["model.targets.vit=[attn.qkv]"], tiny=False)
    model_cfg = resolve_all(cfg)["model"]
    assert model_cfg["targets"]["vit"] == ["attn.qkv"] and model_cfg["targets"]["bert"] == BERT


def test_bad_target_stage_names_the_key_and_choices():
    with pytest.raises(Exception, match=r"model.target_stages must be a subset of \['qkv', 'proj', 'mlp'\]"):
        resolve_all(compose_cfg(["model.target_stages=[qkv,ffn]"], tiny=False))


# The grounding head and query length each (task, model) pair composes to.
HEAD_BEFORE = {
    "tiny": dict(name="fusion", width=128, layers=2, ff=512, heads=4, eliminate=False, fusion_box="spatial"),
    "dinov2_bert": dict(name="official", width=768, layers=3, ff=1024, heads=8, eliminate=True),
}
HEAD_BEFORE["dinov2_ast"] = HEAD_BEFORE["dinov2_bert"]
QUERY_LEN_BEFORE = {"tiny": 20, "dinov2_bert": 40, "dinov2_ast": 40}


@pytest.mark.parametrize("task", ["refcoco", "refcoco+", "refcocog"])
@pytest.mark.parametrize("model", ["tiny", "dinov2_bert", "dinov2_ast"])
def test_grounding_head_preset_follows_the_model(task, model):
    resolved = resolve_all(compose_cfg([f"task={task}", f"model={model}"], tiny=False))
    assert {k: resolved["task"]["head"][k] for k in HEAD_BEFORE[model]} == HEAD_BEFORE[model]
    assert resolved["task"]["module"]["head"] == resolved["task"]["head"]  # the task builds the node it shows
    assert resolved["data"]["max_query_len"] == QUERY_LEN_BEFORE[model]
    assert resolved["task"]["module"]["max_query_len"] == QUERY_LEN_BEFORE[model]
    assert "grounding_head" not in resolved["model"] and "max_query_len" not in resolved["model"]


@pytest.mark.parametrize("model", ["tiny", "dinov2_bert"])
def test_grounding_experiments_fix_the_official_head(model):
    """The official head wins over the model's preset (also under debug=fast, which switches to tiny towers)."""
    overrides = ["experiment=main_refcoco", "debug=fast"] if model == "tiny" else ["experiment=main_refcoco"]
    resolved = resolve_all(compose_cfg(overrides, tiny=False))
    assert resolved["model"]["name"] == model
    official = dict(HEAD_BEFORE["dinov2_bert"], dropout=0.1, eliminate_threshold=0.015, eliminate_keep=0.1)
    assert {k: resolved["task"]["head"][k] for k in official} == official
    assert resolved["data"]["max_query_len"] == 40
