#!/usr/bin/env bash
# GPU acceptance check: everything this repo claims about CUDA, in one run, written to one JSON + one log.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default OUT_DIR: outputs/gpu_check/<timestamp>)
#
# Steps (each recorded with its exit code and wall time; a failing step does not stop the others):
#   gpu_tests          pytest -m gpu (the GPU-marked tests)
#   fast_bf16/fast_fp16  train.py debug=fast on the GPU under bf16-mixed / 16-mixed autocast (tiny towers)
#   ddp_1gpu           train.py debug=fast with trainer=ddp's strategy on one device
#   real_bf16/real_fp16  a few training steps of the paper's towers (DINOv2-B/14 @ 448 + BERT-base shapes) on the
#                      synthetic grounding set; the weights are random unless the hubs' files are cached, since
#                      a GPU node may have no internet (speed and memory do not depend on the weights)
#   bench_*            scripts/benchmark.py at the paper's batch 20: bf16 and fp16 autocast, with and without
#                      --compile (the CoLA / LoRA ratios, train step, eval, peak memory)
# Without CUDA it writes {"skipped": ...} and exits 0, so it is safe to call anywhere.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT" || exit 2
LOG="$OUT/gpu_check.log"
JSON="$OUT/gpu_check.json"
: > "$LOG"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
  echo '{"skipped": "no CUDA device visible to torch"}' > "$JSON"
  echo "gpu_check: no CUDA device visible to torch; nothing to run (wrote $JSON)"
  exit 0
fi

STEPS="$OUT/steps.tsv"
: > "$STEPS"
step() {  # step NAME CMD...: runs CMD, appends its output to the log and "NAME<TAB>rc<TAB>seconds" to steps.tsv
  local name=$1
  shift
  echo "=== $name: $*" >> "$LOG"
  local t0 rc
  t0=$(date +%s)
  "$@" >> "$LOG" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  echo "gpu_check: $name rc=$rc"
}

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
RUNS="paths.output_dir=$OUT/runs"
FAST=(debug=fast trainer.accelerator=gpu "$RUNS")
# BERT-base shape with random weights and the pip-shipped BERT uncased WordPiece tokenizer (same vocabulary)
REAL=(model=dinov2_bert model.vision.pretrained=false "~model.text.name_or_path"
  "+model.text.tiny={hidden_size:768,num_hidden_layers:12,num_attention_heads:12,intermediate_size:3072}"
  "model.tokenizer=\${cola.minilm:}" trainer=gpu trainer.max_steps=5 trainer.limit_val_batches=2
  trainer.limit_test_batches=2 data.batch_size=4 data.eval_batch_size=4 "$RUNS")

step gpu_tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
step fast_bf16 "$PY" train.py "${FAST[@]}" trainer.precision=bf16-mixed
step fast_fp16 "$PY" train.py "${FAST[@]}" trainer.precision=16-mixed
step ddp_1gpu "$PY" train.py "${FAST[@]}" trainer.strategy=ddp trainer.devices=1 trainer.precision=bf16-mixed
step real_bf16 "$PY" train.py "${REAL[@]}" trainer.precision=bf16-mixed
step real_fp16 "$PY" train.py "${REAL[@]}" trainer.precision=16-mixed
BENCH=(scripts/benchmark.py --device cuda --batch 20 --methods frozen lora peft_lora cola moka)
step bench_bf16 "$PY" "${BENCH[@]}" --dtype bf16 --json "$OUT/bench_bf16.json"
step bench_fp16 "$PY" "${BENCH[@]}" --dtype fp16 --json "$OUT/bench_fp16.json"
step bench_bf16_compile "$PY" "${BENCH[@]}" --dtype bf16 --compile --json "$OUT/bench_bf16_compile.json"
step bench_fp16_compile "$PY" "${BENCH[@]}" --dtype fp16 --compile --json "$OUT/bench_fp16_compile.json"

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": int(secs)}
bench = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench_*.json"))}
report = {
    "device": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "passed": all(s["rc"] == 0 for s in steps.values()),
    "steps": steps,
    "benchmarks": bench,
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(f"gpu_check: {'all steps passed' if report['passed'] else 'FAILED steps: ' + str([n for n, s in steps.items() if s['rc']])}")
print(f"gpu_check: report {out / 'gpu_check.json'}, log {out / 'gpu_check.log'}")
sys.exit(0 if report["passed"] else 1)
PYEOF
