"""A tower family is one class (cola.models.block_steps): its block steps, layer names, stream, builder and anchor
role; the tower, the dual encoder's anchor and the config check ask it."""

from __future__ import annotations

import pytest

from cola.models import encoders
from cola.models.block_steps import FAMILIES, MODALITIES
from cola.peft.config import STREAMS
from cola.validation import models_with


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_class_names_its_stream_builder_and_layers(family):
    steps = FAMILIES[family]
    assert steps.family == family and steps.modality in STREAMS
    assert callable(getattr(encoders, steps.builder)) and steps.target_layers
    assert MODALITIES[family] == steps.modality


def test_every_stream_has_one_family_and_only_text_is_an_anchor():
    assert sorted(MODALITIES.values()) == sorted(STREAMS)
    assert [f for f, steps in FAMILIES.items() if steps.anchor] == ["bert"]


def test_tower_takes_stream_and_anchor_from_its_family():
    from cola.models.tower import build_tower

    tower = build_tower(family="vit", name="vit_small_patch14_dinov2", img_size=28, embed_dim=48, depth=1, num_heads=2)
    assert tower.modality == "vision" and tower.anchor is False and tower.family == "vit"
    with pytest.raises(ValueError, match="family must be one of"):
        build_tower(family="vitt")


def test_the_missing_tower_hint_lists_the_model_configs_that_have_the_towers(tmp_path):
    (tmp_path / "a.yaml").write_text("vision: {family: vit}\ntext: null\naudio: {family: ast}\n")
    (tmp_path / "b.yaml").write_text("vision: {family: vit}\ntext: {family: bert}\n")
    (tmp_path / "_shared.yaml").write_text("vision: {}\ntext: {}\naudio: {}\n")
    assert models_with(["vision", "audio"], tmp_path) == ["a"]
    assert models_with(["vision", "text"], tmp_path) == ["b"]
    assert models_with(["vision", "text", "audio"], tmp_path) == []
    assert "dinov2_bert" in models_with(["vision", "text"]) and "dinov2_ast" not in models_with(["vision", "text"])
