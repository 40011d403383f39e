#!/bin/bash
# The project's GPU checks and benchmarks, as named steps, each under its own time limit and all under one
# deadline, so that one slow step cannot eat the rest of a timed GPU session. Results land in $RESULTS
# (default $OUT, else bench/results/gpu): each step's JSON and log, all of them also packed in $PACK (default
# $RESULTS/all.tgz) after every step (a device session brings back a few files only: RESULTS=/tmp/r
# PACK=$OUT/all.tgz). Usage, from the repo root:
#   OUT=$OUT bash bench/gpu_all.sh                   (part "engine": the static engine's correctness, end-to-end
#                                                      speed vs HF, the 1.1B bandwidth floor, where a step's time goes)
#   PART=kernels OUT=$OUT bash bench/gpu_all.sh      (kernel correctness and speed, optimal-verifier cost,
#                                                      Lambda decode speed, multi-draft end to end)
#   PART=batch OUT=$OUT bash bench/gpu_all.sh        (batches of 16 and 64 against HF batched generate, and the
#                                                      speed-up ceiling of chain speculation)
#   STEPS="step_time e2e_engine" OUT=$OUT bash ...   (any steps of any part, in that order)
#   DEADLINE=400 ...                                 (seconds for the whole run; a step gets what is left, at most
#                                                      its own limit; default 480)
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_all.sh   (a CPU run of the steps at toy sizes)
# E2E_SKIP: configuration names (separated by ';') the e2e_engine step leaves out (default: HF assisted and the
# dynamic engine's rows, which take most of the step's time on a GPU and are measured on the CPU);
# E2E_EXTRA: more e2e arguments (e.g. --inductor); GPU_CHECKS: which gpu_checks to run (default all).
set -u
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
OUT=${RESULTS:-${OUT:-bench/results/gpu}}
PACK=${PACK:-$OUT/all.tgz}
DEADLINE=${DEADLINE:-480}
mkdir -p "$OUT"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/env.log"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then echo "=== $name: skipped (deadline)"; return; fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "=== $name (limit ${secs}s): $*"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s"; grep -v -E "it/s\]$|s/it\]$|warn" "$OUT/$name.log" | tail -n 40
  tar czf "$PACK.part" --exclude=all.tgz --exclude=all.tgz.part -C "$OUT" . && mv "$PACK.part" "$PACK"
}

if [ "${SMOKE:-0}" = 1 ]; then
  CHECKS="--prompts 1 --new-tokens 16 --runs 300"; E2E="--quick --prompts 1 --new-tokens 16"; BW="--smoke --new-tokens 8 --repeats 1"
  STEP_TIME="--smoke --steps 8 --repeats 1"; DEV=cpu; OPT="--quick"
  BATCH="--quick"; CEIL="--quick"
else
  CHECKS="--prompts 3 --new-tokens 64 --runs 600"; E2E="--prompts 3 --repeats 3 --new-tokens 128 --dtype bfloat16"
  BW="--new-tokens 128 --repeats 3"; STEP_TIME="--steps 64 --repeats 3 --models 1b --modes cudagraphs,inductor,inductor-frozen,inductor-tuned"; DEV=cuda; OPT="--vocab 32000 151936 --k 2 4 8"
  BATCH="--batch 16,64 --prompts 64 --temperatures 0,1 --repeats 2"; CEIL="--batch 1,16,64 --repeats 10"
fi
E2E_SKIP=${E2E_SKIP-HF assisted;fastdecode autoregressive;fastdecode speculative (adaptive)}

run_step() {
  case $1 in
    gpu_checks) step gpu_checks 150 "$PY" bench/gpu_checks.py $CHECKS --checks "${GPU_CHECKS:-greedy,windows,law,compiled}" \
                  --out "$OUT/gpu_checks.json" ;;
    e2e_engine) step e2e_engine 200 "$PY" bench/e2e.py --suite engine $E2E ${E2E_EXTRA:-} --skip "$E2E_SKIP" \
                  --out "$OUT/e2e_engine.json" ;;
    bandwidth_floor) step bandwidth_floor 120 "$PY" bench/bandwidth_floor.py $BW --out "$OUT/bandwidth_floor.json" ;;
    step_time) step step_time 130 "$PY" bench/step_time.py $STEP_TIME --out "$OUT/step_time.json" ;;
    kernels_check) step kernels_check 90 "$PY" bench/kernels_gpu_check.py ;;
    kernels_bench) step kernels_bench 120 "$PY" bench/kernels.py --quick --budget-s 60 --out "$OUT/kernels.json" ;;
    optimal_cost) step optimal_cost 60 "$PY" bench/optimal_cost.py --device $DEV --check $OPT --no-plot --out "$OUT/optimal_cost.json" ;;
    long_context) step long_context 90 "$PY" bench/long_context.py --device $DEV --skip ppl,passkey --lengths 1024,4096,16384 \
                    --decode-tokens 128 --out "$OUT" ;;
    e2e_multi) step e2e_multi 90 "$PY" bench/e2e.py --suite multi --device $DEV --quick --out "$OUT/e2e_multi.json" ;;
    batch) step batch 300 "$PY" bench/batch.py --device $DEV $BATCH --out "$OUT/batch.json" ;;
    spec_ceiling) step spec_ceiling 90 "$PY" bench/spec_ceiling.py --device $DEV $CEIL --out "$OUT/spec_ceiling.json" ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
}

case ${PART:-engine} in
  engine) DEFAULT="gpu_checks e2e_engine bandwidth_floor step_time" ;;
  kernels) DEFAULT="kernels_check kernels_bench optimal_cost long_context e2e_multi" ;;
  batch) DEFAULT="batch spec_ceiling" ;;
  *) echo "unknown PART ${PART}"; exit 2 ;;
esac
for s in ${STEPS:-$DEFAULT}; do run_step "$s"; done
echo "=== all steps done in ${SECONDS}s"
