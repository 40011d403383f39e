#!/bin/bash
# The project's GPU checks and benchmarks, in two parts of at most 8 minutes each (one call of the device
# tool per part), each step under its own timeout so that one slow step cannot eat the rest. Results land
# in $OUT (default bench/results/gpu), the log of each step in $OUT/<step>.log. Usage, from the repo root:
#   OUT=$OUT bash bench/gpu_all.sh                (part "engine", 430 s on an H200 before the multi-draft and Lambda rows: the static engine's
#                                                  correctness, end-to-end speed vs HF, the 1.1B bandwidth floor)
#   PART=kernels OUT=$OUT bash bench/gpu_all.sh   (kernel correctness and speed, optimal-verifier cost,
#                                                  Lambda decode speed, multi-draft end to end; not yet run)
#   PART=batch OUT=$OUT bash bench/gpu_all.sh     (batches of 16 and 64 against HF batched generate, and the
#                                                  speed-up ceiling of chain speculation; not yet run)
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_all.sh   (a CPU run of the engine steps at toy sizes;
#                                                  PART=batch SMOKE=1 ... for the batch steps)
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
  CHECKS="--prompts 1 --new-tokens 16 --runs 300"; E2E="--quick --prompts 1 --new-tokens 16"; BW="--smoke --new-tokens 8 --repeats 1"
else
  CHECKS="--prompts 3 --new-tokens 64 --runs 800"; E2E="--prompts 3 --repeats 3 --new-tokens 128 --dtype bfloat16"
  BW="--new-tokens 128 --repeats 3"
fi
if [ "${PART:-engine}" = batch ]; then
  if [ "${SMOKE:-0}" = 1 ]; then BATCH="--quick"; CEIL="--quick"; DEV=cpu; else
    BATCH="--batch 16,64 --prompts 64 --temperatures 0,1 --repeats 2"; CEIL="--batch 1,16,64 --repeats 10"; DEV=cuda; fi
  step batch 300 "$PY" bench/batch.py --device $DEV $BATCH --out "$OUT/batch.json"
  step spec_ceiling 90 "$PY" bench/spec_ceiling.py --device $DEV $CEIL --out "$OUT/spec_ceiling.json"
elif [ "${PART:-engine}" = kernels ]; then
  step kernels_check 90 "$PY" bench/kernels_gpu_check.py
  step kernels_bench 120 "$PY" bench/kernels.py --quick --budget-s 60 --out "$OUT/kernels.json"
  step optimal_cost 60 "$PY" bench/optimal_cost.py --device cuda --check --quick --no-plot --out "$OUT/optimal_cost.json"
  step long_context 90 "$PY" bench/long_context.py --device cuda --skip ppl,passkey --lengths 1024,4096,16384 \
    --decode-tokens 128 --out "$OUT"
  step e2e_multi 90 "$PY" bench/e2e.py --suite multi --device cuda --quick --out "$OUT/e2e_multi.json"
else
  step gpu_checks 90 "$PY" bench/gpu_checks.py $CHECKS --out "$OUT/gpu_checks.json"
  step e2e_engine 300 "$PY" bench/e2e.py --suite engine $E2E --out "$OUT/e2e_engine.json"
  step bandwidth_floor 120 "$PY" bench/bandwidth_floor.py $BW --out "$OUT/bandwidth_floor.json"
fi
echo "=== all steps done in ${SECONDS}s"
