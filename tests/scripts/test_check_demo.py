"""The demo check (cola/demo_check.py, `make check-demo`): its verdicts on made-up runs, and the README's seed table
rendered from the stored summary. The check itself trains for ~40 min: `make check-demo`; one seed of it is the
slow test at the end."""

from __future__ import annotations

import json

import pytest

from cola import demo_check
from cola.demo_check import STORED, compare, readme_block, render_table, summarise, unmet_targets


def _runs(values: dict[str, list[tuple[float, float, float]]]) -> dict[str, dict[int, dict[str, float]]]:
    """{method: per seed (val, testA, testB)} as metrics.json dicts (with the fixed-box floor)."""
    floor = {f"{s}/acc@0.5_fixed_box": 0.05 for s in demo_check.SPLITS}
    return {
        m: {
            seed: {**floor, **{f"{s}/acc@0.5": v for s, v in zip(demo_check.SPLITS, row)}}
            for seed, row in enumerate(rows)
        }
        for m, rows in values.items()
    }


REFERENCE = summarise(
    _runs(
        {
            "cola": [(0.6, 0.62, 0.60), (0.55, 0.58, 0.57), (0.65, 0.66, 0.63)],
            "frozen": [(0.3, 0.31, 0.30), (0.28, 0.29, 0.27), (0.33, 0.35, 0.31)],
        }
    )
)


def test_summary_statistics_are_the_sample_ones():
    testa = REFERENCE["methods"]["cola"]["testA"]
    assert testa["values"] == [0.62, 0.58, 0.66] and testa["min"] == 0.58 and testa["max"] == 0.66
    assert testa["mean"] == pytest.approx(0.62) and testa["std"] == pytest.approx(0.04)  # n - 1
    assert REFERENCE["floor"] == {"val": 0.05, "testA": 0.05, "testB": 0.05}


def test_runs_like_the_reference_pass():
    assert compare(REFERENCE, REFERENCE) == []


def test_a_seed_outside_the_stored_range_or_near_the_floor_is_named():
    ref = {"cola": [(0.6, 0.62, 0.60), (0.55, 0.58, 0.57), (0.65, 0.66, 0.63)], "frozen": [(0.3,) * 3] * 3}
    far = summarise(_runs({**ref, "cola": [(0.6, 0.62, 0.60), (0.55, 0.58, 0.57), (0.8, 0.75, 0.63)]}))
    problems = compare(far, REFERENCE)  # 0.75 is above the stored 0.58-0.66 widened by 0.04
    assert len(problems) == 1 and "testA seed 2: 0.750 outside" in problems[0], problems
    low = summarise(_runs({**ref, "cola": [(0.6, 0.62, 0.60), (0.2, 0.25, 0.57), (0.65, 0.66, 0.63)]}))
    problems = compare(low, REFERENCE)
    assert any("testA: worst seed 0.250 not 0.25 above the fixed-box floor" in p for p in problems), problems


def test_unmet_targets_name_the_weak_seed_and_the_frozen_tie():
    assert unmet_targets(REFERENCE) == []
    weak = summarise(
        _runs(
            {
                "cola": [(0.6, 0.62, 0.60), (0.5, 0.56, 0.49), (0.65, 0.66, 0.63)],
                "frozen": [(0.3, 0.31, 0.30), (0.5, 0.55, 0.50)],  # seeds 0 and 1 only
            }
        )
    )
    assert unmet_targets(weak) == [
        "cola testB: worst seed 0.490 < 0.5",
        "seed 1: cola 0.525 does not beat frozen 0.525 by 0.1",
    ]


def test_the_readme_table_is_rendered_from_the_stored_summary():
    """The README's seed table is the rendering of docs/demo_seeds.json, so a typed edit of either fails here."""
    stored = json.loads(STORED.read_text())
    assert readme_block(demo_check.README.read_text()) == render_table(stored)
    assert stored["methods"]["cola"]["testA"]["seeds"] == [0, 1, 2, 3, 4]
    assert compare(stored, stored) == []  # the stored runs pass their own check (range, floor)


def test_write_re_renders_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    start, end = demo_check.MARKERS
    readme.write_text(f"# title\n\n{start}\nold table\n{end}\n\nafter\n")
    demo_check.write_readme(REFERENCE, readme)
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"\n{end}\n\nafter\n") and "old table" not in text
    assert readme_block(text) == render_table(REFERENCE)
    readme.write_text(f"# title\n{start}\n{end}\nafter\n")  # an empty block is filled in place, not at the top
    demo_check.write_readme(REFERENCE, readme)
    assert readme.read_text() == f"# title\n{start}\n{render_table(REFERENCE)}\n{end}\nafter\n"
    with pytest.raises(demo_check.DemoCheckError, match="lacks the markers"):
        readme_block("no markers here")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seeds", "-1"], "seeds must be distinct integers >= 0, got [-1]"),
        (["--seeds", "0", "0"], "got [0, 0]"),
        (["--methods", "frozen"], "methods must include cola"),
        (["--out", "{file}"], "is a file; it must be a folder"),
    ],
)
def test_bad_arguments_exit_2_before_any_run(args, words, tmp_path, monkeypatch, capsys):
    """Each refusal names the value and what was expected, and nothing trains (``train`` is never called)."""
    from scripts import check_demo

    monkeypatch.setattr(demo_check, "train", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    (tmp_path / "f").write_text("")
    args = [a.format(file=tmp_path / "f") for a in args]
    assert check_demo.main([*args, *([] if "--out" in args else ["--out", str(tmp_path / "runs")])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err, err


@pytest.mark.slow
def test_a_fresh_demo_run_agrees_with_the_readme(tmp_path):
    """`python train.py seed=0` (the demo, ~4 min on 2 idle cores) lands within the README's stated spread."""
    fresh = demo_check.check(tmp_path, seeds=[0], methods=["cola"])
    assert fresh["methods"]["cola"]["testA"]["seeds"] == [0]
