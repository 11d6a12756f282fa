"""The final console table: one column per metric, or one row per metric when there are many (AVQA); NaN as '-'."""

from __future__ import annotations

from cola.runio import MAX_METRIC_COLUMNS, print_metrics_table


def test_few_metrics_one_row_per_split(capsys):
    print_metrics_table({"test/acc": 0.5, "val/acc": 0.25, "params/trainable": 3, "params/total": 9}, "ave | cola")
    out = capsys.readouterr().out
    assert "split" in out and "0.5000" in out and "0.2500" in out and "trainable parameters: 3 of 9" in out


def test_many_metrics_one_row_per_metric_and_nan_as_dash(capsys):
    names = [f"acc_type{i}" for i in range(MAX_METRIC_COLUMNS + 3)]
    metrics = {f"test/{n}": 0.125 for n in names}
    metrics.update({f"val/{n}": float("nan") for n in names})
    print_metrics_table(metrics, "avqa | cola")
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if "acc_type" in ln]
    assert len(rows) == len(names)  # every metric name on its own, unabbreviated row
    assert all("0.1250" in r and "-" in r and "nan" not in r for r in rows)
