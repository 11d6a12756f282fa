"""The command line as a user meets it: bad input is one paragraph and exit code 2, a run folder is never damaged,
evaluations land in their own folder, refused runs leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_args, train_py


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (and the set of folders)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _one_paragraph_error(res, *words: str) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    err = res.stderr.strip().splitlines()
    lines = [line for line in err if line.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(synthetic_refcoco, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    res = train_py(*cli_args(synthetic_refcoco, run, "peft=cola"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
    return run


@pytest.mark.ci
def test_not_a_checkpoint_leaves_a_finished_run_untouched(finished_run, synthetic_refcoco, tmp_path):
    before = _snapshot(finished_run)
    junk = tmp_path / "notes.ckpt"
    junk.write_text("not a checkpoint")
    res = train_py(*cli_args(synthetic_refcoco, finished_run, "peft=lora", f"ckpt_path={junk}", "resume_finished=true"))
    _one_paragraph_error(res, "is not a checkpoint train.py wrote", "weights_only=True")
    assert _snapshot(finished_run) == before


@pytest.mark.ci
def test_resuming_a_finished_run_is_refused_unless_asked(finished_run, synthetic_refcoco):
    before = _snapshot(finished_run)
    res = train_py(*cli_args(synthetic_refcoco, finished_run, "peft=cola", "ckpt_path=last"))
    _one_paragraph_error(res, "finished run", "resume_finished=true")
    assert _snapshot(finished_run) == before


@pytest.mark.ci
def test_foreign_checkpoint_and_other_config_are_refused(finished_run, synthetic_refcoco, tmp_path):
    before = _snapshot(finished_run)
    last = finished_run / "checkpoints" / "last.ckpt"
    # the run's own checkpoint, but another method on the command line
    res = train_py(*cli_args(synthetic_refcoco, finished_run, "peft=lora", "ckpt_path=last", "resume_finished=true"))
    _one_paragraph_error(res, "another peft config", "method")
    # the right method but another setting than the run folder's config.yaml
    res = train_py(
        *cli_args(synthetic_refcoco, finished_run, "peft=cola", "ckpt_path=last", "resume_finished=true", "seed=7")
    )
    _one_paragraph_error(res, "another configuration", "seed: run 42 != now 7")
    # a checkpoint that unpickles but is not ours (weights_only refuses arbitrary objects)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    res = train_py(*cli_args(synthetic_refcoco, tmp_path / "new_run", "peft=cola", f"ckpt_path={foreign}"))
    _one_paragraph_error(res, "no state_dict / cola_peft_config")
    assert not (tmp_path / "new_run").exists()  # refused before writing: no empty folder left
    assert _snapshot(finished_run) == before and last.is_file()


@pytest.mark.ci
def test_eval_writes_its_own_folder_and_never_touches_the_run(finished_run, tmp_path):
    before = _snapshot(finished_run)
    outputs = tmp_path / "outputs"
    res = train_py(f"ckpt_path={finished_run}", f"paths.output_dir={outputs}", script="eval.py")
    assert res.returncode == 0, res.stderr[-3000:]
    evals = list((outputs / "refcoco" / "evals").iterdir())
    assert len(evals) == 1 and {"config.yaml", "metrics.json"} <= {p.name for p in evals[0].iterdir()}
    metrics = json.loads((evals[0] / "metrics.json").read_text())
    run_metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["val/acc@0.5"] == pytest.approx(run_metrics["val/acc@0.5"], abs=1e-6)
    assert "eval" in (evals[0] / "config.yaml").read_text()
    assert _snapshot(finished_run) == before
    # a file that is not a checkpoint: one paragraph, no evals folder left behind
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    junk = copy / "checkpoints" / "junk.ckpt"  # inside a run folder, so its config.yaml is found
    junk.write_bytes(b"\x00" * 64)
    res = train_py(f"ckpt_path={junk}", f"paths.output_dir={tmp_path / 'out2'}", script="eval.py")
    _one_paragraph_error(res, "is not a checkpoint train.py wrote")
    assert list((tmp_path / "out2").rglob("*")) == []  # not even the empty refcoco/evals/<ts> folders


@pytest.mark.ci
@pytest.mark.parametrize(
    "override,words",
    [
        ("rank=-3", ["rank must be a positive integer", "got -3"]),
        ("rank=abc", ["rank must be a positive integer", "got 'abc'"]),
        ("peft=lorax", ["peft=lorax: no such option", "did you mean peft=lora?", "cola"]),
        ("trainer.max_step=3", ["trainer.max_step: no such key", "did you mean trainer.max_steps"]),
        ("task=refcocoo", ["task=refcocoo: no such option", "refcoco"]),
        ("peft.propagation=progresive", ["propagation must be one of", "progresive"]),
    ],
)
def test_configuration_errors_are_one_paragraph_exit_2(override, words, tmp_path):
    res = train_py(override, "debug=fast", f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_paragraph_error(res, *words)
    assert "search path" not in line and "while resolving" not in line  # Hydra/OmegaConf internals stay out
    assert not (tmp_path / "run").exists()


@pytest.mark.ci
def test_data_root_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "refer.zip"
    f.write_bytes(b"zip")
    res = train_py(f"data.root={f}", "debug=fast", f"hydra.run.dir={tmp_path / 'run'}")
    _one_paragraph_error(res, "is a file, not a folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.ci
def test_any_positive_rank_runs(synthetic_refcoco, tmp_path):
    run = tmp_path / "run"
    res = train_py(*cli_args(synthetic_refcoco, run, "peft=lora", "rank=12"))
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = (run / "config.yaml").read_text()
    assert "rank: 12" in cfg and "alpha: 6" in cfg
    from cola.peft import read_adapters

    tensors, peft, _ = read_adapters(run / "adapter.safetensors")  # the trained adapters have that rank
    assert peft["rank"] == 12 and peft["alpha"] == 6
    down = {k: t.shape for k, t in tensors.items() if k.endswith("lora_A")}  # (splits x r, d_in), fused qkv: 3 slices
    up = {k: t.shape for k, t in tensors.items() if k.endswith("lora_B")}  # (d_out, r)
    assert down and len(down) == len(up), sorted(tensors)
    assert all(s[0] in (12, 36) for s in down.values()) and all(s[1] == 12 for s in up.values()), (down, up)


@pytest.mark.ci
def test_console_prints_each_line_once_and_ends_with_the_run_folder(synthetic_refcoco, tmp_path):
    run = tmp_path / "run"
    res = train_py(*cli_args(synthetic_refcoco, run, "peft=lora", "trainer.enable_progress_bar=false"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    log_lines = [line for line in lines if "] - " in line]  # timestamped: a record printed twice repeats exactly
    assert log_lines and len(log_lines) == len(set(log_lines)), "a log line was printed twice"
    assert not any(line.startswith("INFO: ") for line in lines)  # lightning's own second console handler
    assert "💡" not in out and "LOAD REPORT" not in out  # library banners are off by default
    assert res.stdout.strip().splitlines()[-1] == f"run folder: {run}"
    assert "Trainer.fit" in (run / "train.log").read_text()  # the file log has the run's lines too


def test_hydra_flags_still_reach_hydra(tmp_path):
    res = train_py("task=ave", "debug=fast", "--cfg", "job")  # prints the composed job config, runs nothing
    assert res.returncode == 0, res.stderr[-2000:]
    assert "task:" in res.stdout and "name: ave" in res.stdout
