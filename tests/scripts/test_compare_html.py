"""compare_runs.py --html: one self-contained page with, per task, the table and every plot (settings side by side
with seed dots and mean ± std, metric against rank for a rank sweep, λ across depth of each CoLA setting, metric
against trainable parameters), checked as data and in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from cola.compare import run
from tests.scripts.test_compare_runs import make_run, run_config

RANKS = (4, 8)
SEEDS = (0, 1)
PARAMS = {"lora": 1000, "cola": 1500}


def score(method: str, rank: int, seed: int) -> float:
    return 0.50 + 0.05 * (method == "cola") + 0.01 * rank + 0.02 * seed


def lambdas(rank: int, seed: int) -> dict[str, list[float]]:
    """A lambda.json of two vision blocks and two text layers (what cola.analysis.LambdaLogger writes)."""
    out = {}
    for block in (0, 1):
        base = 0.5 + 0.1 * block + 0.01 * rank + 0.001 * seed
        out[f"vision.blocks.{block}.attn.qkv"] = [base, base + 0.01, base + 0.02]
        out[f"vision.blocks.{block}.attn.proj"] = [base + 0.03]
        out[f"vision.blocks.{block}.mlp.fc1"] = [base + 0.04]
        out[f"vision.blocks.{block}.mlp.fc2"] = [base + 0.05]
        out[f"text.encoder.layer.{block}.attention.self.query"] = [base - 0.1]
    return out


@pytest.fixture(scope="module")
def rank_sweep(tmp_path_factory) -> Path:
    """An ablation_rank-like refcoco sweep (lora and cola at r = 4, 8, seeds 0 and 1; CoLA runs with lambda.json)
    and an AVE sweep of lora and cola."""
    root = tmp_path_factory.mktemp("sweeps")
    job = 0
    for method in ("lora", "cola"):
        for rank in RANKS:
            for seed in SEEDS:
                cfg = run_config("task=refcoco", f"peft={method}", f"rank={rank}", f"seed={seed}")
                v = score(method, rank, seed)
                metrics = {"testA/acc@0.5": v, "testB/acc@0.5": v - 0.1, "params/trainable": PARAMS[method] * rank}
                d = make_run(root / "refcoco" / str(job), cfg, metrics)
                if method == "cola":
                    (d / "lambda.json").write_text(json.dumps(lambdas(rank, seed)))
                job += 1
    for method in ("lora", "cola"):
        for seed in SEEDS:
            cfg = run_config("task=ave", f"peft={method}", f"seed={seed}")
            metrics = {"test/acc": 0.7 + 0.1 * seed, "test/acc_majority": 0.36, "params/trainable": 10}
            d = make_run(root / "ave" / f"{method}{seed}", cfg, metrics)
            if method == "cola":
                (d / "lambda.json").write_text(json.dumps(lambdas(4, seed)))
    return root


@pytest.fixture(scope="module")
def page(rank_sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page")
    assert run([rank_sweep / "refcoco", rank_sweep / "ave"], out=out, html=out / "report.html") == 0
    return out / "report.html"


def figures(html: str) -> list[dict[str, str]]:
    found = []
    for m in re.finditer(r'<figure class="plot" ([^>]*)><img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', html):
        attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1)))
        found.append({**attrs, "alt": m.group(2), "png": m.group(3)})
    return found


def test_the_page_has_every_table_and_plot(page):
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and 'src="http' not in html  # self-contained
    sections = re.findall(r'<section class="task" id="task-([^"]+)"><h2>([^<]+)</h2>', html)
    assert [title for _, title in sections] == ["ave", "refcoco (data.dataset=refcoco, data.split_by=unc)"]
    ref = html.split('id="task-refcoco')[1]
    # the table of today's comparison.md, as HTML: rows by method and rank, mean ± std in %, gain vs the matching LoRA
    for rank in RANKS:
        values = [100 * score("cola", rank, s) for s in SEEDS]
        cell = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert f"<tr><td>cola rank={rank} alpha={rank // 2}</td><td>2</td><td>{cell}</td><td>+5.00</td>" in ref
    plots = figures(html)
    by_task = {}
    for p in plots:
        by_task.setdefault(p["alt"].split(":")[0], []).append((p["plot"], p.get("metric") or p.get("setting")))
    assert by_task["refcoco (data.dataset=refcoco, data.split_by=unc)"] == [
        ("metric", "testA/acc@0.5"),
        ("rank", "testA/acc@0.5"),
        ("lambda", "cola rank=4 alpha=2"),  # rank=R sets the alpha too
        ("lambda", "cola rank=8 alpha=4"),
        ("params", "testA/acc@0.5"),
    ]
    assert by_task["ave"] == [("metric", "test/acc"), ("lambda", "cola"), ("params", "test/acc")]  # no rank sweep
    for p in plots:
        png = base64.b64decode(p["png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, p["alt"]


def test_the_floor_is_drawn_where_the_runs_wrote_one(rank_sweep):
    from cola.compare import compare, load_folder

    (ave,) = compare(load_folder(rank_sweep / "ave")[0])
    assert [d["floors"] for d in ave["detail"]] == [{"test/acc": 0.36}, {"test/acc": 0.36}]  # test/acc_majority
    (ref,) = compare(load_folder(rank_sweep / "refcoco")[0])
    assert all(d["floors"] == {} for d in ref["detail"])


def test_the_lambda_plot_averages_the_seeds(rank_sweep):
    from cola.compare import compare, load_folder

    runs, _ = load_folder(rank_sweep / "refcoco")
    (table,) = compare(runs)
    detail = {d["setting"]: d for d in table["detail"]}
    cola4 = detail["cola rank=4 alpha=2"]
    assert cola4["lambda_runs"] == 2 and detail["lora rank=4 alpha=2"]["lambda"] == {}
    # vision k of block 1: 0.5 + 0.1 + 0.04 + 0.001 * seed + 0.01, averaged over seeds 0 and 1
    assert cola4["lambda"]["vision"]["k"][1] == pytest.approx(0.6505)
    assert sorted(cola4["lambda"]) == ["text", "vision"] and cola4["lambda"]["text"]["q"][0] == pytest.approx(0.4405)
    assert cola4["seeds"]["testA/acc@0.5"] == [(0, score("cola", 4, 0)), (1, score("cola", 4, 1))]


def test_the_script_writes_the_page(rank_sweep, tmp_path):
    from tests.conftest import train_py

    res = train_py(
        str(rank_sweep / "ave"),
        "--html",
        str(tmp_path / "p.html"),
        "--out",
        str(tmp_path),
        script="scripts/compare_runs.py",
    )
    assert res.returncode == 0, res.stderr
    assert f"HTML page: {tmp_path / 'p.html'} (3 plots: 1 metric, 1 lambda, 1 params)" in res.stdout
    assert len(figures((tmp_path / "p.html").read_text())) == 3


def _browser() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("the `chromium` binary is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")


def test_the_page_renders_in_a_headless_browser(page, tmp_path):
    """Every plot decodes and is laid out in Chromium; the page's screenshot is the picture in docs/figures."""
    executable = _browser()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.goto(page.as_uri(), wait_until="load")
            images = tab.evaluate(
                "() => [...document.querySelectorAll('figure.plot img')].map(i => "
                "({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.getBoundingClientRect().width}))"
            )
            headings = tab.locator("h2").all_inner_texts()
            shot = tmp_path / "page.png"
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(images) == 8 and all(i["ok"] and i["w"] > 100 for i in images), images
    assert headings == ["ave", "refcoco (data.dataset=refcoco, data.split_by=unc)"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
