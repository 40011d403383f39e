#!/bin/bash
# Every GPU check and benchmark of the project in one call of the device tool, each step under its own
# timeout so that one slow step cannot eat the rest (limits add up to 8 minutes). Results land in $OUT
# (default bench/results/gpu), the log of each step in $OUT/<step>.log. Usage, from the repo root:
#   OUT=$OUT bash bench/gpu_all.sh          (on the device machine: $OUT is the folder that comes back)
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_all.sh   (a CPU run of the same steps at toy sizes)
set -u
PY=${PYTHON:-python3}
export PYTHONPATH=. TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/env.log"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s): $*"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s"; grep -v "it/s\]$" "$OUT/$name.log" | tail -n 40
}

if [ "${SMOKE:-0}" = 1 ]; then
  CHECKS="--prompts 1 --new-tokens 16 --runs 60"; E2E="--quick --prompts 1 --new-tokens 16"; BW="--smoke --new-tokens 8 --repeats 1"
else
  CHECKS="--prompts 3 --new-tokens 64 --runs 800"; E2E="--prompts 3 --repeats 3 --new-tokens 128 --dtype bfloat16"
  BW="--new-tokens 128 --repeats 3"
fi
step gpu_checks 90 "$PY" bench/gpu_checks.py $CHECKS --out "$OUT/gpu_checks.json"
step e2e_engine 270 "$PY" bench/e2e.py --suite engine $E2E --out "$OUT/e2e_engine.json"
step bandwidth_floor 120 "$PY" bench/bandwidth_floor.py $BW --out "$OUT/bandwidth_floor.json"
echo "=== all steps done in ${SECONDS}s"
