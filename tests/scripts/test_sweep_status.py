"""scripts/sweep_status.py on a sweep folder holding a job in every state: done, running, partial (killed, stopped),
failed, not started, and a folder no job of the sweep claims; the exit code says whether every job is done."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cola.sweep_status import format_duration, sweep_status
from tests.conftest import train_py

NOW = time.time()


@pytest.fixture(autouse=True)
def _now():
    """Each test's jobs are stamped with the time it runs at: the script reads the clock itself, so a module-level
    time taken at collection would age the "running" job's heartbeat by the suite's length."""
    global NOW
    NOW = time.time()


HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _job(sweep: Path, name: str, overrides: list[str], attempts: list[dict], **files: str) -> Path:
    folder = sweep / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 10}, "seed": 0}))
    (folder / "job.json").write_text(
        json.dumps({"overrides": overrides, "attempts": attempts, **files.pop("record", {})})
    )
    for name_, text in files.items():
        (folder / name_.replace("_", ".")).write_text(text)
    return folder


def attempt(outcome: str, start: float, end: float | None, pid: int | None = None, **more) -> dict:
    heartbeat = end if end is not None else more.pop("heartbeat", start)
    return {
        "host": HOST,
        "pid": pid or _dead_pid(),
        "start": start,
        "end": end,
        "heartbeat": heartbeat,
        "outcome": outcome,
        **more,
    }


@pytest.fixture()
def sweep(tmp_path) -> Path:
    """peft=lora,cola seed=0,1,2 (6 jobs): done, running, killed at step 4, failed, stopped, not started; and a folder
    of a job the sweep no longer has."""
    multirun = {
        "hydra": {"overrides": {"task": ["debug=fast", "peft=lora,cola", "seed=0,1,2"]}, "sweeper": {"params": None}}
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    common = ["debug=fast"]
    _job(
        tmp_path,
        "0",
        ["peft=lora", "seed=0", *common],
        [attempt("running", NOW - 1000, None, heartbeat=NOW - 900), attempt("finished", NOW - 60, NOW)],
        metrics_json=json.dumps({"testA/acc@0.5": 0.625, "val/acc@0.5": 0.5, "time/total_s": 60.0}),
    )
    _job(
        tmp_path,
        "1",
        ["peft=cola", "seed=0", *common],
        [attempt("running", NOW - 30, None, pid=os.getpid(), heartbeat=NOW - 1, step=3, total_steps=10)],
        record={"best": {"monitor": "val/acc@0.5", "score": 0.25, "step": 2}},
    )
    killed = _job(
        tmp_path, "2", ["peft=lora", "seed=1", *common], [attempt("running", NOW - 20, None, heartbeat=NOW - 5)]
    )
    (killed / "checkpoints").mkdir()
    torch.save({"global_step": 4}, killed / "checkpoints" / "last.ckpt")
    _job(
        tmp_path,
        "3",
        ["peft=cola", "seed=1", *common],
        [attempt("failed", NOW - 10, NOW - 5, error="RuntimeError: from job.json")],
        train_log="[2026-01-01 00:00:00,000][cola.harness][INFO] - start\n"
        "[2026-01-01 00:00:01,000][cola.sweep][ERROR] - the run failed: RuntimeError: simulated crash at step 8\n",
    )
    _job(tmp_path, "4", ["peft=lora", "seed=2", *common], [attempt("stopped", NOW - 8, NOW - 4, total_steps=10)])
    _job(
        tmp_path,
        "9",
        ["peft=moka", "seed=0", *common],
        [attempt("finished", NOW - 7, NOW - 4)],
        metrics_json=json.dumps({"testA/acc@0.5": 0.5}),
    )
    return tmp_path


def test_every_state(sweep):
    """Rows in the sweep's launch order (the last swept key varies fastest), each job found by its key: folder 1
    holds job 3 (peft=cola seed=0), whatever the folder numbers say."""
    rows = sweep_status(sweep, now=NOW)
    got = [
        (r.num, r.folder.name if r.folder else None, r.key, r.state, r.detail, r.metric, r.wall_s, r.error)
        for r in rows
    ]
    assert got == [
        (0, "0", "peft=lora seed=0", "done", "done", "testA/acc@0.5 0.6250", pytest.approx(100 + 60), None),
        (1, "2", "peft=lora seed=1", "partial", "partial at step 4 of 10", "", pytest.approx(15), None),
        (2, "4", "peft=lora seed=2", "partial", "partial at step 0 of 10 (stopped)", "", pytest.approx(4), None),
        (
            3,
            "1",
            "peft=cola seed=0",
            "running",
            "running, step 3 of 10",
            "val/acc@0.5 0.2500 (best so far)",
            pytest.approx(30),
            None,
        ),
        (
            4,
            "3",
            "peft=cola seed=1",
            "failed",
            "failed",
            "",
            pytest.approx(5),
            "the run failed: RuntimeError: simulated crash at step 8",
        ),
        (5, None, "peft=cola seed=2", "not started", "not started", "", None, None),
        (None, "9", "peft=moka seed=0", "done", "done", "testA/acc@0.5 0.5000", pytest.approx(3), None),
    ]


def test_the_script_prints_a_row_per_job_and_exits_1_until_all_are_done(sweep, tmp_path_factory):
    res = train_py(str(sweep), script="scripts/sweep_status.py", timeout=120)
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"sweep {sweep}"
    assert lines[1].split() == ["job", "folder", "overrides", "state", "key", "metric", "wall", "time"]
    assert lines[2].split() == [
        "0",
        "0",
        "peft=lora",
        "seed=0",
        "done",
        "testA/acc@0.5",
        "0.6250",
        "2",
        "min",
        "40",
        "s",
    ]
    assert lines[3].split()[:2] == ["1", "2"] and "partial at step 4 of 10" in lines[3]
    assert lines[6].split()[:5] == ["4", "3", "peft=cola", "seed=1", "failed"]
    assert lines[7] == "    last error: the run failed: RuntimeError: simulated crash at step 8"
    assert lines[8].split()[:5] == ["5", "-", "peft=cola", "seed=2", "not"]
    assert lines[9].split()[:4] == ["-", "9", "peft=moka", "seed=0"]
    assert lines[-1] == "progress: 2 of 7 jobs done (29%): 2 done, 1 running, 2 partial, 1 failed, 1 not started"
    done = tmp_path_factory.mktemp("done")
    _job(done, "0", ["peft=lora"], [attempt("finished", NOW - 7, NOW)], metrics_json=json.dumps({"test/acc": 0.9}))
    ok = train_py(str(done), script="scripts/sweep_status.py", timeout=120)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "progress: 1 of 1 jobs done (100%): 1 done"
    missing = train_py(str(done / "nope"), script="scripts/sweep_status.py", timeout=120)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_durations_read_as_a_person_would():
    assert [format_duration(s) for s in (None, 9.4, 61, 3725)] == ["—", "9 s", "1 min 01 s", "1 h 02 min"]
