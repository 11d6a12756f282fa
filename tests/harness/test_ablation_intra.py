"""experiment=ablation_intra: {lora, cola} x peft.intra {lora, dora, rslora, pissa, adalora} x seeds on the official grounding
settings; every job composes, resolves and parses, also under debug=fast."""

from __future__ import annotations

import itertools

from cola.peft import build_peft
from tests.conftest import compose_cfg, resolve_all

METHODS, INTRAS, SEEDS = ["lora", "cola"], ["lora", "dora", "rslora", "pissa", "adalora"], ["0", "1", "2"]


def test_ablation_intra_sweeps_every_method_and_variant_on_the_official_settings():
    cfg = compose_cfg(["experiment=ablation_intra"], tiny=False)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {"peft": METHODS, "peft.intra": INTRAS, "seed": SEEDS}
    assert len(list(itertools.product(*params.values()))) == 30
    official = resolve_all(compose_cfg(["experiment=main_refcoco", "peft=lora"], tiny=False))
    for method, intra in itertools.product(METHODS, INTRAS):
        job = resolve_all(
            compose_cfg(["experiment=ablation_intra", f"peft={method}", f"peft.intra={intra}"], tiny=False)
        )
        spec = build_peft(**job["peft"])
        assert spec.name == method and spec.config.intra == intra
        assert (spec.config.rank, spec.config.alpha) == (16, 8)  # official r 16, alpha 8 for every variant
        assert job["task"]["name"] == "refcoco" and job["model"]["name"] == "dinov2_bert"
        for key in ("optim", "trainer", "data"):  # the official grounding recipe, whatever the variant
            assert job[key] == official[key], key
        assert job["optim"]["loraplus_ratio"] is None


def test_ablation_intra_dry_run_config_is_tiny_cpu():
    for intra in ("dora", "adalora"):
        cfg = compose_cfg(["experiment=ablation_intra", "debug=fast", "peft=cola", f"peft.intra={intra}"], tiny=False)
        assert cfg.model.name == "tiny" and cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps == 1
        assert cfg.peft.intra == intra and cfg.experiment_name == "ablation_intra"
        assert build_peft(**resolve_all(cfg)["peft"]).config.variant.name == intra
