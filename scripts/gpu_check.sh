#!/usr/bin/env bash
# GPU acceptance check: everything this repo claims about CUDA, in one run, written to one JSON + one log.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default OUT_DIR: outputs/gpu_check/<timestamp>)
#
# Steps (each recorded with its exit code, wall time and, when it failed, why; a failing step does not stop the
# others):
#   gpu_tests          pytest -m gpu (the GPU-marked tests, tests/gpu/); pytest's "no tests collected" (exit 5)
#                      is a failure of its own, named as such, not a test failure
#   fast_bf16/fast_fp16  train.py debug=fast on the GPU under bf16-mixed / 16-mixed autocast (tiny towers)
#   ddp_1gpu           train.py debug=fast with trainer=ddp's strategy on one device
#   real_bf16/real_fp16  a few training steps of the paper's towers (DINOv2-B/14 @ 448 + BERT-base shapes) on the
#                      synthetic grounding set; the weights are random unless the hubs' files are cached, since
#                      a GPU node may have no internet (speed and memory do not depend on the weights)
#   bench_*            scripts/benchmark.py at the paper's batch 20: vl in bf16 and fp16 autocast, av in bf16, each
#                      with and without --compile (the CoLA / LoRA ratios of train step, eval and peak memory beside
#                      their FLOP floor, and the parameter-matched LoRA)
#   bench_table        scripts/benchmark_table.py on those reports: OUT_DIR/bench_table.md, the README's
#                      performance table for this GPU (also in gpu_check.json as "bench_table")
#
# Report: each step prints one console line as it ends ("gpu_check: NAME passed (Ns)" or
# "gpu_check: NAME FAILED: REASON (rc=N, Ns)", the same line in the log) and appends
# "NAME<TAB>rc<TAB>seconds<TAB>reason" to OUT_DIR/steps.tsv (reason empty when it passed). At the end
# OUT_DIR/gpu_check.json holds {"passed", "failed": {name: reason}, "steps": {name: {rc, seconds, status, reason}},
# "benchmarks", device fields}; the console names every failed step with its reason; the exit code is 1 when
# any step failed, 0 when all passed.
#
# Without CUDA it writes {"skipped": ...} and exits 0, so it is safe to call anywhere.
#
# Testing the report without a GPU: GPU_CHECK_FAKE_STEPS="NAME=RC ..." (e.g. "gpu_tests=5 fast_bf16=0") skips the
# CUDA probe and runs, instead of the real steps, one stand-in step per entry that prints a line and exits RC,
# through the same step recording, failure reasons and final report (gpu_check.json gets "fake_steps": true).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
FAKE=${GPU_CHECK_FAKE_STEPS:-}
mkdir -p "$OUT" || exit 2
LOG="$OUT/gpu_check.log"
JSON="$OUT/gpu_check.json"
: > "$LOG"

if [ -z "$FAKE" ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
  echo '{"skipped": "no CUDA device visible to torch"}' > "$JSON"
  echo "gpu_check: no CUDA device visible to torch; nothing to run (wrote $JSON)"
  exit 0
fi

STEPS="$OUT/steps.tsv"
: > "$STEPS"

fail_reason() {  # fail_reason NAME RC LAST_LINE: why step NAME failed, in words (rc != 0)
  local name=$1 rc=$2 last=$3 why
  if [ "$rc" -gt 128 ]; then
    why="killed by signal $((rc - 128))"
    [ "$rc" -eq 137 ] && why="$why (SIGKILL: out of memory?)"
  else
    case "$name:$rc" in  # pytest's exit codes (https://docs.pytest.org/en/stable/reference/exit-codes.html)
      gpu_tests:1) why="gpu-marked tests failed" ;;
      gpu_tests:2) why="pytest was interrupted" ;;
      gpu_tests:3) why="pytest internal error" ;;
      gpu_tests:4) why="pytest usage error" ;;
      gpu_tests:5) why="pytest collected no gpu-marked tests" ;;
      *) why="exited with status $rc" ;;
    esac
  fi
  [ -n "$last" ] && why="$why; last output: $last"
  printf '%s' "$why"
}

step() {  # step NAME CMD...: runs CMD, appends its output to the log and "NAME<TAB>rc<TAB>seconds<TAB>reason" to steps.tsv
  local name=$1
  shift
  echo "=== $name: $*" >> "$LOG"
  local t0 rc secs offset last reason line
  offset=$(wc -c < "$LOG")
  t0=$(date +%s)
  "$@" >> "$LOG" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    reason=""
    line="gpu_check: $name passed (${secs}s)"
  else
    # the step's last non-blank output line (pytest's summary, train.py's error paragraph end), tabs flattened
    last=$(tail -c +$((offset + 1)) "$LOG" | tr '\t\r' '  ' | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c 1-200)
    reason=$(fail_reason "$name" "$rc" "$last")
    line="gpu_check: $name FAILED: $reason (rc=$rc, ${secs}s)"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$reason" >> "$STEPS"
  echo "$line" >> "$LOG"
  echo "$line"
}

if [ -n "$FAKE" ]; then
  read -ra specs <<< "$FAKE"
  for spec in "${specs[@]}"; do
    name=${spec%%=*}
    rc=${spec#*=}
    if ! [[ "$name" =~ ^[A-Za-z0-9_]+$ && "$rc" =~ ^[0-9]+$ && "$spec" == "$name=$rc" ]]; then
      echo "gpu_check: GPU_CHECK_FAKE_STEPS entry '$spec' is not NAME=RC (RC an exit status, e.g. gpu_tests=5)" >&2
      exit 2
    fi
    step "$name" bash -c "echo 'fake step $name exiting with status $rc'; exit $rc"
  done
else
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
  RUNS="paths.output_dir=$OUT/runs"
  FAST=(debug=fast trainer.accelerator=gpu "$RUNS")
  # BERT-base shape with random weights and the pip-shipped BERT uncased WordPiece tokenizer (same vocabulary)
  REAL=(model=dinov2_bert model.vision.pretrained=false "~model.text.name_or_path"
    "+model.text.tiny={hidden_size:768,num_hidden_layers:12,num_attention_heads:12,intermediate_size:3072}"
    "model.tokenizer=\${cola.minilm:}" trainer=gpu trainer.max_steps=5 trainer.limit_val_batches=2
    trainer.limit_test_batches=2 data.batch_size=4 data.eval_batch_size=4 "$RUNS")

  step gpu_tests "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests  # -rs: skip reasons in the log
  step fast_bf16 "$PY" train.py "${FAST[@]}" trainer.precision=bf16-mixed
  step fast_fp16 "$PY" train.py "${FAST[@]}" trainer.precision=16-mixed
  step ddp_1gpu "$PY" train.py "${FAST[@]}" trainer.strategy=ddp trainer.devices=1 trainer.precision=bf16-mixed
  step real_bf16 "$PY" train.py "${REAL[@]}" trainer.precision=bf16-mixed
  step real_fp16 "$PY" train.py "${REAL[@]}" trainer.precision=16-mixed
  BENCH=(scripts/benchmark.py --device cuda --batch 20 --methods frozen lora peft_lora lora_param_matched cola moka)
  step bench_bf16 "$PY" "${BENCH[@]}" --dtype bf16 --json "$OUT/bench_bf16.json"
  step bench_fp16 "$PY" "${BENCH[@]}" --dtype fp16 --json "$OUT/bench_fp16.json"
  step bench_bf16_compile "$PY" "${BENCH[@]}" --dtype bf16 --compile --json "$OUT/bench_bf16_compile.json"
  step bench_fp16_compile "$PY" "${BENCH[@]}" --dtype fp16 --compile --json "$OUT/bench_fp16_compile.json"
  step bench_av_bf16 "$PY" "${BENCH[@]}" --pair av --dtype bf16 --json "$OUT/bench_av_bf16.json"
  step bench_av_bf16_compile "$PY" "${BENCH[@]}" --pair av --dtype bf16 --compile --json "$OUT/bench_av_bf16_compile.json"
  step bench_table "$PY" scripts/benchmark_table.py "$OUT"/bench_*.json --out "$OUT/bench_table.md"
fi

"$PY" - "$OUT" "${FAKE:+fake}" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

out, fake = Path(sys.argv[1]), sys.argv[2] == "fake"
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs, reason = (line.split("\t") + [""])[:4]
    rc = int(rc)
    reason = reason or (None if rc == 0 else f"exited with status {rc}")
    steps[name] = {"rc": rc, "seconds": int(secs), "status": "passed" if rc == 0 else "failed", "reason": reason}
failed = {n: s["reason"] for n, s in steps.items() if s["rc"]}
device = {"device": None, "torch": None, "cuda": None}
try:
    import torch

    device = {"device": None, "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        device["device"] = torch.cuda.get_device_name(0)
except Exception as e:  # the report must still be written (a broken torch is itself a finding)
    device["torch"] = f"import failed: {type(e).__name__}: {e}"
bench = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench_*.json"))}
table = out / "bench_table.md"
report = {
    **device,
    "passed": bool(steps) and not failed,
    "failed": failed,
    "steps": steps,
    "benchmarks": bench,
    "bench_table": table.read_text() if table.is_file() else None,
}
if fake:
    report["fake_steps"] = True
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
if not steps:
    print("gpu_check: FAILED: no step ran (steps.tsv is empty)")
elif failed:
    print(f"gpu_check: FAILED {len(failed)} of {len(steps)} steps: {', '.join(failed)}")
    for name, reason in failed.items():
        print(f"gpu_check:   {name} FAILED: {reason} (rc={steps[name]['rc']})")
else:
    print(f"gpu_check: all {len(steps)} steps passed")
print(f"gpu_check: report {out / 'gpu_check.json'}, log {out / 'gpu_check.log'}")
sys.exit(0 if report["passed"] else 1)
PYEOF
exit "${PIPESTATUS[0]}"
