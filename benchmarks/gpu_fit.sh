#!/usr/bin/env bash
# The population fit on a GPU (device machine with JAX+CUDA preinstalled): FIT_N
# patients (default 1,000; copies of 4 simulated records) × 6 visits × FIT_DAYS CGM
# days (default 1), fixed-grid windows, all patients in one lane batch, at most
# FIT_ROUNDS rounds (default 30); per-round progress in population_fit.err, the GPU's
# memory in use every 5 s in gpu_memory.csv. FIT_ARGS: more arguments of
# population.py (e.g. "--float32-jacobians --log-calls").
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/isletfit-gpu}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 \
  > "$OUT/gpu_memory.csv" 2> /dev/null &
smi=$!
cd benchmarks
timeout "${FIT_TIMEOUT:-500}" python3 population.py --json --grid --skip-forward \
  --base-patients 4 --fit-replicate "${FIT_N:-1000}" --fit-days "${FIT_DAYS:-1}" --lanes "${FIT_N:-1000}" \
  --baseline-patients 2 --max-rounds "${FIT_ROUNDS:-30}" ${FIT_ARGS:-} \
  > "$OUT/population_fit.json" 2> "$OUT/population_fit.err"
rc=$?
kill "$smi" 2> /dev/null
echo "rc $rc"; tail -30 "$OUT/population_fit.err"
