#!/usr/bin/env bash
# The population fit on a GPU (device machine with JAX+CUDA preinstalled): 1,000
# patients (copies of 4 simulated records) × 6 visits × 1 CGM day, fixed-grid windows,
# all patients in one lane batch; per-round progress in population_fit.err.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/isletfit-gpu}"; mkdir -p "$OUT"
cd benchmarks
timeout "${FIT_TIMEOUT:-500}" python3 population.py --json --grid --skip-forward \
  --base-patients 4 --fit-replicate "${FIT_N:-1000}" --fit-days 1 --lanes "${FIT_N:-1000}" \
  --baseline-patients 2 --max-rounds 30 \
  > "$OUT/population_fit.json" 2> "$OUT/population_fit.err"
echo "rc $?"; tail -30 "$OUT/population_fit.err"
