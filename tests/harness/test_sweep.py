"""Re-running a sweep into its folder (cola.sweep): the job key, where each job's folder is, what a re-run does with
each job (skip / resume / run / refuse / start over), job.json; and, end to end, a 4-job debug sweep killed after two
jobs and one checkpoint of the third, then resumed (README "An interrupted sweep, its status and its comparison")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from cola import harness
from cola.runio import job_config
from cola.sweep import (
    JOB_FILE,
    JobRecord,
    apply_plan,
    job_key,
    job_running,
    locate,
    new_folder_name,
    plan_job,
    read_definition,
    sweep_definition,
)
from cola.validation import SetupError
from tests.conftest import REPO, TINY_TEST_OVERRIDES, compose_cfg, fast_cfg, train_py, two_epoch_run


# ------------------------------------------------------------------------------------------------ keys and folders
def test_definition_expands_experiment_params_and_command_line_as_hydra_does():
    d = sweep_definition(["debug=fast", "peft=lora,cola", "resume_sweep=/x"], {"seed": "0,1,2"})
    assert d.swept == ("seed", "peft")  # resume_sweep is never part of a key; debug=fast is common to every job
    assert len(d.jobs) == 6
    assert d.jobs[0] == ("seed=0", "debug=fast", "peft=lora", "resume_sweep=/x")  # the basic sweeper's order
    assert [d.key(j) for j in d.jobs[:3]] == ["peft=lora seed=0", "peft=cola seed=0", "peft=lora seed=1"]


def test_job_key_is_the_swept_values_whatever_the_order():
    swept = ["peft", "seed"]
    assert job_key(["seed=1", "data.root=/d", "peft=cola"], swept) == job_key(["peft=cola", "seed=1"], swept)
    assert job_key(["peft=cola", "seed=1"], swept) == "peft=cola seed=1"
    assert job_key(["+model.x=1", "seed=2"], ["model.x"]) == "+model.x=1"


def test_read_definition_from_hydras_multirun_yaml(tmp_path):
    assert read_definition(tmp_path) is None
    multirun = {
        "hydra": {"overrides": {"task": ["experiment=controls", "data.root=/d"]}, "sweeper": {"params": None}},
        "paths": {"run_dir": None},
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    d = read_definition(tmp_path)
    assert d.swept == () and d.jobs == (("experiment=controls", "data.root=/d"),)
    multirun["hydra"]["sweeper"]["params"] = {"peft.condition": "pooled,zero", "seed": "0,1"}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    d = read_definition(tmp_path)
    assert d.swept == ("peft.condition", "seed") and len(d.jobs) == 4


def _job_folder(sweep: Path, name: str, overrides: list[str] | None, cfg=None) -> Path:
    folder = sweep / name
    folder.mkdir(parents=True)
    if cfg is not None:
        cfg = cfg.copy()
        OmegaConf.update(cfg, "paths.run_dir", str(folder), force_add=True)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(job_config(cfg)))
    if overrides is not None:
        (folder / JOB_FILE).write_text(json.dumps({"overrides": overrides, "attempts": []}))
    return folder


def test_a_job_is_found_by_its_key_not_its_number(tmp_path):
    swept = ["peft", "seed"]
    _job_folder(tmp_path, "0", ["peft=cola", "seed=0", "debug=fast"])
    _job_folder(tmp_path, "1", ["peft=lora", "seed=0", "debug=fast"])
    legacy = tmp_path / "2"  # a job folder from before job.json: config.yaml only, matched by its number
    legacy.mkdir()
    (legacy / "config.yaml").write_text("seed: 1\n")
    assert locate(tmp_path, "peft=lora seed=0", swept, 0) == [tmp_path / "1"]
    assert locate(tmp_path, "peft=lora seed=1", swept, 2) == [legacy]
    assert locate(tmp_path, "peft=cola seed=1", swept, 3) == []


@pytest.fixture(scope="module")
def job_cfg():
    return compose_cfg(["debug=fast", "peft=lora", "seed=0", "data.root=/data/refer"])


def _plan(cfg, sweep: Path, num: int = 0, overrides=("peft=lora", "seed=0")):
    return plan_job(
        cfg, sweep_dir=sweep, job_dir=sweep / str(num), overrides=list(overrides), num=num, swept=["peft", "seed"]
    )


def test_a_finished_job_with_the_same_config_is_skipped(job_cfg, tmp_path):
    folder = _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    (folder / "metrics.json").write_text(json.dumps({"testA/acc@0.5": 0.5}))
    # where it runs, its data root and how it logs may change (a moved dataset, W&B turned on)
    moved = compose_cfg(
        ["debug=fast", "peft=lora", "seed=0", "data.root=/mnt/refer", "logger=wandb", "data.num_workers=3"]
    )
    plan = _plan(moved, tmp_path)
    assert (plan.action, plan.run_dir, plan.metrics) == ("skip", folder, {"testA/acc@0.5": 0.5})


def test_a_partial_job_resumes_from_its_newest_checkpoint(job_cfg, tmp_path):
    folder = _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    (folder / "checkpoints").mkdir()
    torch.save({"global_step": 6}, folder / "checkpoints" / "last.ckpt")
    plan = _plan(job_cfg, tmp_path)
    assert (plan.action, plan.ckpt, plan.step) == ("resume", folder / "checkpoints" / "last.ckpt", 6)
    time.sleep(0.01)
    torch.save({"global_step": 7}, folder / "hpc_ckpt_1.ckpt")  # SLURM's preemption checkpoint, newer
    assert _plan(job_cfg, tmp_path).ckpt == folder / "hpc_ckpt_1.ckpt"


def test_a_job_started_without_a_checkpoint_runs_again_keeping_the_attempt(job_cfg, tmp_path):
    folder = _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    (folder / "train.log").write_text("first attempt\n")
    plan = _plan(job_cfg, tmp_path)
    assert (plan.action, plan.run_dir, plan.clear) == ("run", folder, True)
    assert apply_plan(plan, sweep_dir=tmp_path, job_dir=folder, num=0) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["previous"]
    assert (folder / "previous" / "1" / "train.log").read_text() == "first attempt\n"


def test_another_config_is_refused_with_the_differences_unless_restarted(job_cfg, tmp_path):
    folder = _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    (folder / "metrics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    changed = compose_cfg(["debug=fast", "peft=lora", "seed=0", "data.root=/data/refer", "optim.lr_adapters=0.001"])
    with pytest.raises(SetupError) as err:
        _plan(changed, tmp_path)
    text = str(err.value)
    assert (
        f"in {folder} was run with another configuration (1 difference(s): optim.lr_adapters: run 0.0002 != now 0.001)"
        in text
    )
    assert "restart_changed=true" in text
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # a longer schedule is another job too (trainer.* may change for a single run's resume, not a sweep job's)
    with pytest.raises(SetupError, match=r"trainer.max_steps: run 1 != now 5"):
        _plan(
            compose_cfg(["debug=fast", "peft=lora", "seed=0", "data.root=/data/refer", "trainer.max_steps=5"]), tmp_path
        )
    with open_dict(changed):
        changed.restart_changed = True
    plan = _plan(changed, tmp_path)
    assert (plan.action, plan.clear, plan.diffs) == ("run", True, ["optim.lr_adapters: run 0.0002 != now 0.001"])
    apply_plan(plan, sweep_dir=tmp_path, job_dir=folder, num=0)
    assert {p.name: p.read_bytes() for p in (folder / "previous" / "1").iterdir()} == before


def test_a_new_job_whose_number_holds_another_job_gets_its_own_folder(job_cfg, tmp_path):
    _job_folder(tmp_path, "0", ["peft=cola", "seed=0"], job_cfg)  # the sweep's arguments were reordered
    plan = _plan(job_cfg, tmp_path)
    assert (plan.action, plan.run_dir) == ("run", None)
    name = new_folder_name(0, "peft=lora seed=0")
    assert name.startswith("0_") and len(name) == 10
    assert apply_plan(plan, sweep_dir=tmp_path, job_dir=tmp_path / "0", num=0) == tmp_path / name
    assert (tmp_path / name).is_dir() and (tmp_path / "0" / JOB_FILE).is_file()  # the other job is untouched


def test_two_folders_of_one_job_are_refused(job_cfg, tmp_path):
    _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    _job_folder(tmp_path, "5", ["peft=lora", "seed=0"], job_cfg)
    with pytest.raises(SetupError, match=r"matches the folders .*/0, .*/5"):
        _plan(job_cfg, tmp_path)


def test_a_job_running_in_another_process_is_refused(job_cfg, tmp_path):
    folder = _job_folder(tmp_path, "0", ["peft=lora", "seed=0"], job_cfg)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        attempt = {"host": socket.gethostname(), "pid": other.pid, "outcome": "running", "heartbeat": time.time()}
        (folder / JOB_FILE).write_text(json.dumps({"overrides": ["peft=lora", "seed=0"], "attempts": [attempt]}))
        with pytest.raises(SetupError, match=rf"is running \(pid {other.pid} on {socket.gethostname()}"):
            _plan(job_cfg, tmp_path)
    finally:
        other.kill()
        other.wait()
    assert _plan(job_cfg, tmp_path).action == "run"  # the process is gone: the job was interrupted


def test_resume_sweep_must_name_the_sweep_folder(tmp_path):
    from cola.sweep import check_sweep

    def multirun(resume, sweep_dir):
        return OmegaConf.create({"resume_sweep": resume, "hydra": {"sweep": {"dir": str(sweep_dir)}}})

    with pytest.raises(SetupError, match=r"resume_sweep=.*/nope: no such sweep folder"):
        check_sweep(multirun(str(tmp_path / "nope"), tmp_path / "nope"))
    with pytest.raises(SetupError, match=r"but hydra.sweep.dir=.*/other: give one of them"):
        check_sweep(multirun(str(tmp_path), tmp_path / "other"))
    assert check_sweep(multirun(str(tmp_path), tmp_path)) is None  # a folder without jobs: every job runs


# ------------------------------------------------------------------------------------------------ job.json
def test_job_record_attempts_and_outcomes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("cola.sweep.HEARTBEAT_S", 0.05)
    with job_running(tmp_path, {"key": "peft=lora", "overrides": ["peft=lora"], "num": 3}) as record:
        record.progress(step=4, total=8)
        time.sleep(0.3)  # the heartbeat writes the step
        running = json.loads((tmp_path / JOB_FILE).read_text())["attempts"][-1]
        assert (running["outcome"], running["step"], running["total_steps"], running["pid"]) == (
            "running",
            4,
            8,
            os.getpid(),
        )
    with pytest.raises(RuntimeError, match="boom"), job_running(tmp_path, {"key": "peft=lora"}):
        raise RuntimeError("boom\nsecond line")
    with pytest.raises(SystemExit), job_running(tmp_path):
        raise SystemExit(128 + signal.SIGTERM)
    data = json.loads((tmp_path / JOB_FILE).read_text())
    assert (data["key"], data["overrides"], data["num"]) == ("peft=lora", ["peft=lora"], 3)
    assert [a["outcome"] for a in data["attempts"]] == ["finished", "failed", "stopped"]
    assert data["attempts"][1]["error"] == "RuntimeError: boom" and "the run failed: RuntimeError: boom" in caplog.text
    assert all(a["end"] >= a["start"] for a in data["attempts"])
    assert isinstance(JobRecord(tmp_path).data["attempts"], list)


def test_a_single_run_records_its_attempt(synthetic_refcoco, tmp_path):
    harness.train(fast_cfg(synthetic_refcoco, tmp_path, "logger=none"), tmp_path, job={"overrides": ["peft=cola"]})
    data = json.loads((tmp_path / JOB_FILE).read_text())
    (attempt,) = data["attempts"]
    assert data["overrides"] == ["peft=cola"] and attempt["outcome"] == "finished"
    assert attempt["step"] == attempt["total_steps"] > 0  # every optimiser step of the run was taken


# ------------------------------------------------------------------------------------------------ end to end
# train.py processes (`make test-ci`): the kill-and-resume sequence takes ~4 min on 2 busy cores (the fixture); the
# comparison with a whole uninterrupted sweep (+1.5 min) and the submitit_local resume (+5 min) are `slow`.
# 4 jobs of 2 epochs x 4 batches (8 steps), a resume point every 2 steps, validation at the end only, deterministic
SWEEP = ["peft=lora,cola", "seed=0,1"]
JOB_RUN = [
    "debug=fast",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.eval_batch_size=8",
    "task.head.width=32",
    "task.head.ff=64",
    "task.head.layers=1",
    "task.head.heads=2",
    *two_epoch_run(8, 2),
]


def sweep_args(root: Path, *extra: str) -> list[str]:
    return ["-m", *SWEEP, *TINY_TEST_OVERRIDES, *JOB_RUN, f"data.root={root}", *extra]


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def status(sweep: Path) -> tuple[int, str]:
    res = train_py(str(sweep), script="scripts/sweep_status.py", timeout=120)
    return res.returncode, res.stdout + res.stderr


def kill_after_checkpoint(sweep: Path, root: Path, job: str) -> int:
    """Starts the sweep in its own process group and kills the whole group (SIGKILL) as soon as job ``job`` has
    written its first checkpoint; returns that checkpoint's step."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLA_ROOT": str(REPO)}
    env.pop("COLA_TRACEBACK", None)
    log = sweep.with_suffix(".log")
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block the sweep
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *sweep_args(root, f"hydra.sweep.dir={sweep}")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ckpt = sweep / job / "checkpoints" / "last.ckpt"
    t0 = time.time()
    try:
        while not ckpt.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"the sweep ended (rc {proc.returncode}) before {ckpt}:\n{log.read_text()[-3000:]}"
                )
            assert time.time() - t0 < 500, f"{ckpt} did not appear in 500 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return int(torch.load(ckpt, weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def resumed_sweep(synthetic_refcoco, tmp_path_factory) -> dict:
    """The sweep killed when its third job has written its first checkpoint, its status, then the same command with
    resume_sweep=<its folder>, the status after it, and a re-run with another config (refused)."""
    sweep = tmp_path_factory.mktemp("sweep") / "multirun"
    out: dict = {"sweep": sweep, "killed_at": kill_after_checkpoint(sweep, synthetic_refcoco, "2")}
    out["status_before"] = status(sweep)
    out["finished_before"] = {j: snapshot(sweep / j) for j in ("0", "1")}
    out["killed_copy"] = sweep.parent / "killed"  # the interrupted state, for the submitit test
    shutil.copytree(sweep, out["killed_copy"])
    t0 = time.time()
    out["resume"] = train_py(*sweep_args(synthetic_refcoco, f"resume_sweep={sweep}"))
    out["resume_s"] = time.time() - t0
    out["status_after"] = status(sweep)
    out["all_after"] = snapshot(sweep)
    out["changed"] = train_py(*sweep_args(synthetic_refcoco, f"resume_sweep={sweep}", "optim.lr_adapters=0.001"))
    return out


@pytest.mark.ci
def test_status_of_the_interrupted_sweep(resumed_sweep):
    rc, text = resumed_sweep["status_before"]
    k = resumed_sweep["killed_at"]
    assert rc == 1, text
    lines = text.splitlines()
    assert lines[1].split() == ["job", "folder", "overrides", "state", "key", "metric", "wall", "time"]
    rows = {line.split()[0]: line for line in lines[2:6]}
    for job, key in (("0", "peft=lora seed=0"), ("1", "peft=lora seed=1")):
        assert key in rows[job] and " done " in rows[job] and "testA/acc@0.5 0." in rows[job]
    assert "peft=cola seed=0" in rows["2"] and f"partial at step {k} of 8" in rows["2"]
    assert "peft=cola seed=1" in rows["3"] and "not started" in rows["3"]
    assert lines[-1] == "progress: 2 of 4 jobs done (50%): 2 done, 1 partial, 1 not started"


@pytest.mark.ci
def test_resume_skips_the_finished_jobs_and_leaves_them_untouched(resumed_sweep):
    res, sweep = resumed_sweep["resume"], resumed_sweep["sweep"]
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert f"re-running sweep {sweep}: 4 jobs: 2 done (skipped), 1 partial (resumed), 1 to run" in log
    for job, key in (("0", "peft=lora seed=0"), ("1", "peft=lora seed=1")):
        assert f"sweep job {job} [{key}]: done in {sweep / job} with the same config: skipped" in log
        assert snapshot(sweep / job) == resumed_sweep["finished_before"][job]  # byte for byte
    k = resumed_sweep["killed_at"]
    assert (
        f"sweep job 2 [peft=cola seed=0]: partial in {sweep / '2'}: resuming from {sweep / '2/checkpoints/last.ckpt'} at step {k}"
        in log
    )


@pytest.mark.ci
def test_the_partial_job_ends_as_an_uninterrupted_run(resumed_sweep, synthetic_refcoco, tmp_path, monkeypatch):
    sweep = resumed_sweep["sweep"]
    assert (
        f"resumed from {sweep / '2/checkpoints/last.ckpt'} at global step {resumed_sweep['killed_at']}"
        in (sweep / "2" / "train.log").read_text()
    )
    monkeypatch.setenv("COLA_ROOT", str(REPO))  # paths as the train.py process resolved them
    job = ["peft=cola", "seed=0", *JOB_RUN, f"data.root={synthetic_refcoco}"]
    reference = harness.train(compose_cfg(job, run_dir=tmp_path), tmp_path)
    resumed = json.loads((sweep / "2" / "metrics.json").read_text())
    assert without_time(resumed) == pytest.approx(without_time(reference), abs=1e-6)
    attempts = json.loads((sweep / "2" / JOB_FILE).read_text())["attempts"]
    assert [a["outcome"] for a in attempts] == ["running", "finished"]  # the killed attempt never finished
    assert attempts[1]["resumed_from_step"] == resumed_sweep["killed_at"]


@pytest.mark.ci
def test_the_job_never_started_runs_and_the_status_is_done(resumed_sweep):
    sweep = resumed_sweep["sweep"]
    (attempt,) = json.loads((sweep / "3" / JOB_FILE).read_text())["attempts"]
    assert attempt["outcome"] == "finished" and attempt["resumed_from_step"] is None
    assert (sweep / "3" / "lambda.json").is_file()
    rc, text = resumed_sweep["status_after"]
    assert rc == 0, text
    assert text.splitlines()[-1] == "progress: 4 of 4 jobs done (100%): 4 done"


@pytest.mark.ci
def test_a_rerun_with_another_config_is_refused_before_any_job(resumed_sweep):
    res, sweep = resumed_sweep["changed"], resumed_sweep["sweep"]
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr
    assert "error: 4 of 4 jobs are refused" in err
    assert "optim.lr_adapters: run 0.0002 != now 0.001" in err and "restart_changed=true" in err
    assert err.count("optim.lr_adapters") == 1 and f"[peft=cola seed=1] in {sweep / '3'}" in err  # said once for all
    assert "Traceback" not in err and "#0 :" not in res.stdout + err  # refused before the launcher ran a job
    assert snapshot(sweep) == resumed_sweep["all_after"]


@pytest.mark.slow
def test_resumed_sweep_equals_an_uninterrupted_sweep(resumed_sweep, synthetic_refcoco, tmp_path):
    full = tmp_path / "full"
    res = train_py(*sweep_args(synthetic_refcoco, f"hydra.sweep.dir={full}"))
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1", "2", "3"):
        expected = without_time(json.loads((full / job / "metrics.json").read_text()))
        got = without_time(json.loads((resumed_sweep["sweep"] / job / "metrics.json").read_text()))
        assert got == pytest.approx(expected, abs=1e-6), job


@pytest.mark.ci
def test_the_comparison_page_of_the_resumed_sweep(resumed_sweep, tmp_path):
    from cola.compare import run

    assert run([resumed_sweep["sweep"]], out=tmp_path, html=tmp_path / "report.html") == 0
    html = (tmp_path / "report.html").read_text()
    assert "<tr><td>lora</td><td>2</td>" in html and "<tr><td>cola</td><td>2</td>" in html  # the two seeds of each
    plots = re.findall(r'<figure class="plot" data-plot="(\w+)" data-(metric|setting)="([^"]*)"', html)
    assert plots == [
        ("metric", "metric", "testA/acc@0.5"),
        ("lambda", "setting", "cola"),
        ("params", "metric", "testA/acc@0.5"),
    ]


@pytest.mark.slow
def test_a_killed_sweep_resumes_under_the_submitit_local_launcher(resumed_sweep, synthetic_refcoco, tmp_path):
    """The same interrupted sweep (a copy, moved to another folder) resumed by hydra/launcher=submitit_local: its
    jobs run in parallel processes numbered by submitit, and find their folders by key all the same."""
    sweep = tmp_path / "moved"
    shutil.copytree(resumed_sweep["killed_copy"], sweep)
    before = {j: snapshot(sweep / j) for j in ("0", "1")}
    res = train_py(
        *sweep_args(synthetic_refcoco, f"resume_sweep={sweep}", "hydra/launcher=submitit_local"), timeout=1500
    )
    assert res.returncode == 0, res.stderr[-3000:]
    job_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    for job, key in (("0", "peft=lora seed=0"), ("1", "peft=lora seed=1")):
        assert f"sweep job {job} [{key}]: done in {sweep / job} with the same config: skipped" in job_logs
        assert snapshot(sweep / job) == before[job]
    assert "sweep job 2 [peft=cola seed=0]: partial" in job_logs
    for job in ("2", "3"):
        expected = without_time(json.loads((resumed_sweep["sweep"] / job / "metrics.json").read_text()))
        got = without_time(json.loads((sweep / job / "metrics.json").read_text()))
        assert got == pytest.approx(expected, abs=1e-6), job
    assert status(sweep)[0] == 0
