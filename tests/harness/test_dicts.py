"""cola.dicts: the one flatten / diff / choice check on plain config dicts."""

from __future__ import annotations

import pytest

from cola.dicts import MISSING, check_choice, differences, dotted_keys, flatten

CFG = {"a": {"b": 1, "c": {"d": [1, 2]}, "e": {}}, "data": {"root": "/x", "root_extra": 1}, "seed": 0}


def test_flatten_keeps_lists_and_empty_mappings_as_leaves():
    assert flatten(CFG) == {"a.b": 1, "a.c.d": [1, 2], "a.e": {}, "data.root": "/x", "data.root_extra": 1, "seed": 0}
    assert flatten({}) == {}


def test_dotted_keys_lists_leaves_and_the_nodes_above_them():
    assert dotted_keys(CFG) == ["a", "a.b", "a.c", "a.c.d", "a.e", "data", "data.root", "data.root_extra", "seed"]


def test_differences_name_key_and_both_values_and_honour_allowed():
    other = {"a": {"b": 2, "c": {"d": [1, 2]}, "e": {}}, "data": {"root": "/y", "root_extra": 2}, "new": True}
    assert differences(CFG, other) == [
        "a.b: run 1 != now 2",
        "data.root: run '/x' != now '/y'",
        "data.root_extra: run 1 != now 2",
        f"new: run '{MISSING}' != now True",
        f"seed: run 0 != now '{MISSING}'",
    ]
    # "a." allows the subtree, "data.root" the key (not data.root_extra), "seed" an exact key
    assert differences(CFG, other, allowed=("a.", "data.root", "seed", "new"), labels=("saved", "current")) == [
        "data.root_extra: saved 1 != current 2"
    ]
    assert differences(CFG, CFG) == []


def test_check_choice_names_key_value_and_choices():
    check_choice("optim.schedule", "poly", ("cosine", "poly"))
    with pytest.raises(ValueError, match=r"optim.schedule must be one of \['cosine', 'poly'\], got 'cosin'"):
        check_choice("optim.schedule", "cosin", ("cosine", "poly"))
