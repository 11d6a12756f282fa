"""One experiment's comparison as a W&B Report (``scripts/wandb_report.py``), with the panels of
``compare_runs.py --html``, built with W&B's own report library (``wandb-workspaces``, ``wandb_workspaces.reports.v2``).

The report reads the runs of one experiment: the W&B ``group`` is the experiment's name and the method is the run's
``job_type`` (``configs/logger/wandb.yaml``). Its panels use the summary values every run writes
(:func:`cola.harness.log_summary`, :class:`cola.analysis.LambdaLogger`): each ``metrics.json`` key (``testA/acc@0.5``,
the floors ``<split>/<metric>_fixed_box|_majority|_fixed_mask``, ``params/trainable``) and every CoLA layer's λ as
``lambda/<stream>.<component>/<block>`` (:mod:`cola.lambdas`). Per metric: the methods side by side (mean ± std over
seeds, with the floor), the metric per seed (the seed dots), the metric against the trainable parameters and, when
the experiment sweeps the rank (``ablation_rank``), against the rank; for CoLA, λ across depth per module.

Everything is built offline: :func:`build_report` makes the ``Report`` object, :func:`describe` prints its structure
(``--dry-run``); only ``Report.save()`` talks to W&B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cola.compare import floor_of
from cola.lambdas import ORDER, SUMMARY_KEY

TASK_METRICS = {
    "refcoco": ("testA/acc@0.5", "testB/acc@0.5", "testA/miou"),
    "refcoco+": ("testA/acc@0.5", "testB/acc@0.5", "testA/miou"),
    "refcocog": ("test/acc@0.5", "test/miou"),
    "ave": ("test/acc",),
    "avs_s4": ("test/miou", "test/fscore"),
    "avs_ms3": ("test/miou", "test/fscore"),
    "avqa": ("test/acc",),
}
"""The metrics a task's report shows by default (``--metric`` chooses others)."""
PARAMS = "params/trainable"


def experiment_spec(experiment: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """What the experiment file sweeps, from the configs as ``train.py -m experiment=NAME`` composes them: the task,
    the methods (``peft`` values), whether it sweeps the rank, the task's towers.

    Raises:
        ValueError: no ``configs/experiment/<experiment>.yaml``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from cola.cli import CONFIG_DIR
    from cola.validation import task_streams

    if not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        names = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
        raise ValueError(
            f"--experiment {experiment}: no configs/experiment/{experiment}.yaml; choices: {', '.join(names)}"
        )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True)
    except HydraException as e:
        raise ValueError(f"--experiment {experiment}: the config does not compose: {e}") from e
    finally:
        GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=False)

    def values(key: str) -> list[str]:
        return [v.strip() for v in str(params[key]).split(",")] if key in params else []  # type: ignore[operator]

    return {
        "task": str(cfg.task.name),
        "methods": values("peft") or [str(cfg.peft.method)],
        "ranks": values("rank") or values("peft.rank"),
        "streams": task_streams(cfg),
        "group": str(cfg.get("experiment_name") or experiment),
    }


def gated(methods: Sequence[str]) -> list[str]:
    """The methods of ``methods`` whose layers learn a gate λ (:data:`cola.peft.GATED_METHODS`): the runs the λ
    section reads."""
    from cola.peft import GATED_METHODS

    return [m for m in methods if m in GATED_METHODS]


def lambda_keys(profile: Mapping[str, Mapping[str, Mapping[int, float]]]) -> dict[str, list[str]]:
    """``{"<stream>.<component>": [summary keys by block]}`` of a λ profile, components in :data:`ORDER`."""
    from cola.lambdas import summary_values

    keys = sorted(summary_values(profile))  # blocks are two digits: sorted in depth order
    out: dict[str, list[str]] = {}
    for stream in profile:
        for comp in [*ORDER, *sorted(set(profile[stream]) - set(ORDER))]:
            mine = [k for k in keys if (m := SUMMARY_KEY.match(k)) and m["stream"] == stream and m["component"] == comp]
            if mine:
                out[f"{stream}.{comp}"] = mine
    return out


def build_report(
    *,
    entity: str,
    project: str,
    experiment: str,
    methods: Sequence[str],
    metrics: Sequence[str],
    rank_sweep: bool = False,
    lambdas: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
):
    """The report object (nothing is sent to W&B).

    Args:
        entity: the W&B entity.
        project: the W&B project (``cola-<task>``).
        experiment: the experiment, the runs' W&B group.
        methods: the methods compared, the runs' job types.
        metrics: the metrics shown, one section each.
        rank_sweep: also plot each metric against ``peft.rank``.
        lambdas: ``{"<stream>.<component>": [λ summary keys by block]}`` (:func:`lambda_keys`); none: no λ section.
        title: the report's title (default ``<experiment>: CoLA vs LoRA``).

    Returns:
        A ``wandb_workspaces.reports.v2.Report``.
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    def runset(name: str, job_types: Sequence[str]) -> wr.Runset:
        return wr.Runset(
            entity=entity,
            project=project,
            name=name,
            filters=expr.And(expr.Metric("Group") == experiment, expr.Metric("JobType").isin(list(job_types))),
        )

    runs = runset(f"{experiment}: {', '.join(methods)}", methods)
    blocks: list[Any] = [
        wr.H1(text=f"{experiment}: CoLA vs LoRA"),
        wr.P(
            text=f"The runs of W&B group {experiment} in {entity}/{project}, the methods as their job type "
            f"({', '.join(methods)}). Per metric: the methods side by side (mean ± std over seeds, with the floor), "
            "every seed, the metric against the trainable parameters"
            + (" and against the rank" if rank_sweep else "")
            + ("; for CoLA, λ across depth per module." if lambdas else ".")
            + " Made by scripts/wandb_report.py; scripts/compare_runs.py --html draws the same from the run folders."
        ),
    ]
    for metric in metrics:
        floor = floor_of(metric)
        bars = [wr.SummaryMetric(metric)] + ([wr.SummaryMetric(floor)] if floor else [])
        panels: list[Any] = [
            wr.BarPlot(
                title=f"{metric} by method: mean ± std over seeds" + (f" (floor: {floor})" if floor else ""),
                metrics=bars,
                groupby="JobType",
                groupby_aggfunc="mean",
                groupby_rangefunc="stddev",
                orientation="v",
            ),
            wr.ScatterPlot(title=f"{metric} per seed", x=wr.Config("seed"), y=wr.SummaryMetric(metric)),
            wr.ScatterPlot(
                title=f"{metric} against the trainable parameters",
                x=wr.SummaryMetric(PARAMS),
                y=wr.SummaryMetric(metric),
                log_x=True,
            ),
        ]
        if rank_sweep:
            panels.append(
                wr.ScatterPlot(
                    title=f"{metric} against the rank", x=wr.Config("peft.rank"), y=wr.SummaryMetric(metric), log_x=True
                )
            )
        blocks += [wr.H2(text=metric), wr.PanelGrid(runsets=[runs], panels=panels)]
    with_lambda = gated(methods)
    if lambdas and with_lambda:
        panels = [
            wr.BarPlot(
                title=f"λ across depth: {module} (blocks in order, mean ± std over seeds)",
                metrics=[wr.SummaryMetric(k) for k in keys],
                groupby="JobType",
                groupby_aggfunc="mean",
                groupby_rangefunc="stddev",
                orientation="v",
            )
            for module, keys in lambdas.items()
        ]
        blocks += [
            wr.H2(text="λ across depth per module (CoLA)"),
            wr.PanelGrid(runsets=[runset("CoLA", with_lambda)], panels=panels),
        ]
    return wr.Report(
        entity=entity,
        project=project,
        title=title or f"{experiment}: CoLA vs LoRA",
        description=f"{experiment} ({', '.join(methods)}): the comparison of scripts/compare_runs.py --html",
        blocks=blocks,
    )


def _metric_name(m: Any) -> str:
    kind = type(m).__name__
    return f"{ {'SummaryMetric': 'summary', 'Config': 'config', 'Metric': 'run'}.get(kind, kind) }:{m.name}"


def describe(report) -> str:
    """The report's structure as text (``--dry-run``): title, blocks, each panel grid's run sets (filters) and
    panels (type, title, axes, grouping)."""
    lines = [
        f"report: {report.title}",
        f"  project: {report.entity}/{report.project}",
        f"  description: {report.description}",
    ]
    for block in report.blocks:
        kind = type(block).__name__
        if kind == "PanelGrid":
            lines.append("  panel grid:")
            for rs in block.runsets:
                lines.append(f"    run set {rs.name!r}: filters {rs.filters}")
            for p in block.panels:
                parts = [f"    {type(p).__name__} {p.title!r}"]
                if getattr(p, "metrics", None):
                    names = [_metric_name(m) for m in p.metrics]
                    shown = names if len(names) <= 4 else [*names[:2], f"... {len(names)} metrics ...", names[-1]]
                    parts.append(f"metrics {', '.join(shown)}")
                for axis in ("x", "y"):
                    if getattr(p, axis, None) is not None and not isinstance(getattr(p, axis), list):
                        parts.append(f"{axis} {_metric_name(getattr(p, axis))}")
                if getattr(p, "groupby", None):
                    parts.append(f"grouped by {p.groupby} ({p.groupby_aggfunc} ± {p.groupby_rangefunc})")
                lines.append("; ".join(parts))
        else:
            lines.append(f"  {kind}: {getattr(block, 'text', '')}")
    return "\n".join(lines)


def lambdas_from_folders(folders: Sequence[Path]) -> dict[str, list[str]]:
    """The λ summary keys of the first CoLA run (``lambda.json``) below the given sweep or run folders."""
    import json

    from cola.lambdas import profile_from_layers

    for folder in folders:
        for path in sorted(Path(folder).rglob("lambda.json")):
            try:
                profile = profile_from_layers(json.loads(path.read_text()))
            except (OSError, ValueError, AttributeError):
                continue
            if profile:
                return lambda_keys(profile)
    return {}


def lambdas_from_wandb(entity: str, project: str, experiment: str, methods: Sequence[str]) -> dict[str, list[str]]:
    """The λ summary keys of the first finished run of the experiment on W&B whose method is one of ``methods`` (the
    experiment's methods with a gate λ, :func:`gated`); ``{}`` when none, or offline."""
    from cola.lambdas import profile_from_summary

    try:
        import wandb

        filters = {"group": experiment, "jobType": {"$in": list(methods)}}
        runs = wandb.Api(timeout=20).runs(f"{entity}/{project}", filters=filters)
        for run in runs:
            profile = profile_from_summary(dict(run.summary))
            if profile:
                return lambda_keys(profile)
    except Exception:  # noqa: BLE001 - no network, no credentials, no such project: the report has no λ section
        return {}
    return {}


def run(
    *,
    entity: str,
    project: str,
    experiment: str,
    metrics: Sequence[str] | None = None,
    sweeps: Sequence[Path] = (),
    title: str | None = None,
    dry_run: bool = False,
) -> int:
    """What ``scripts/wandb_report.py`` does: build the experiment's report and print its structure (``dry_run``)
    or save it to W&B and print its URL. The λ section takes the layer names from a CoLA run of ``sweeps`` (local
    folders) or, when saving, of W&B. Returns the exit code (2: an unknown experiment or metric, on stderr)."""
    import sys

    try:
        spec = experiment_spec(experiment)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = list(metrics or TASK_METRICS.get(spec["task"], ()))
    if not shown:
        print(f"error: task {spec['task']} has no default metrics; give --metric SPLIT/NAME", file=sys.stderr)
        return 2
    bad = [m for m in shown if "/" not in m]
    if bad:
        print(f"error: --metric {bad[0]}: a metric is SPLIT/NAME as in metrics.json (e.g. test/acc)", file=sys.stderr)
        return 2
    with_lambda = gated(spec["methods"])
    lambdas = lambdas_from_folders(sweeps) if sweeps else {}
    if not lambdas and not dry_run and with_lambda:
        lambdas = lambdas_from_wandb(entity, project, spec["group"], with_lambda)
    report = build_report(
        entity=entity,
        project=project,
        experiment=spec["group"],
        methods=spec["methods"],
        metrics=shown,
        rank_sweep=len(spec["ranks"]) > 1,
        lambdas=lambdas,
        title=title,
    )
    if with_lambda and not lambdas:
        print("note: no CoLA run found to read the λ layer names from (give --sweep <sweep folder>): no λ section")
    if dry_run:
        print(describe(report))
        print("dry run: nothing saved")
        return 0
    report.save()
    print(f"saved {report.url}")
    return 0
