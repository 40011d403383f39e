#!/bin/bash
# Every pending GPU check and benchmark, in one call of the device tool (its step limits add up to 10 minutes;
# not yet run on a GPU; each step has its own timeout so one slow step cannot eat the rest). Results land in $OUT
# (default bench/results/gpu); the log of each step in $OUT/<step>.log. Usage, from the repo root:
#   OUT=$OUT bash bench/gpu_all.sh          (on the device machine: $OUT is the folder that comes back)
# Try it on a CPU first: every step prints "no CUDA device" and is skipped or falls back.
set -u
PY=${PYTHON:-python3}   # PYTHON=.venv/bin/python to use a virtualenv
export PYTHONPATH=. TRITON_INTERPRET=0
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/env.log"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s): $*"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s"; tail -n 25 "$OUT/$name.log"
}

step kernels_check 120 "$PY" bench/kernels_gpu_check.py
step kernels_bench 180 "$PY" bench/kernels.py --quick --budget-s 90 --out "$OUT/kernels.json"
step optimal_cost 60 "$PY" bench/optimal_cost.py --device cuda --check --quick --no-plot --out "$OUT/optimal_cost.json"
step long_context 120 "$PY" bench/long_context.py --device cuda --skip ppl,passkey --lengths 1024,4096,16384 \
  --decode-tokens 128 --out "$OUT"
step e2e_multi 120 "$PY" bench/e2e.py --suite multi --device cuda --quick --out "$OUT/e2e_multi.json"
echo "=== all steps done in ${SECONDS}s"
