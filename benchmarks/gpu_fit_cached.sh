#!/usr/bin/env bash
# The 1,000-patient population fit on a GPU twice (device machine with JAX+CUDA
# preinstalled): first in a fresh process with an empty persistent compilation cache
# (cold: every program compiled), then again in a new process reading that cache
# (what a team that fits repeatedly sees). Compilation times of each run (JAX's own
# log, programs over 0.5 s) in compile_<run>.txt. Then the GPU tests of the fits.
set -u
OUT="${OUT:-/tmp/isletfit-gpu}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/isletfit-jax-cache}"
export JAX_LOG_COMPILES=1
rm -rf "$JAX_COMPILATION_CACHE_DIR"
nvidia-smi -L > "$OUT/device.txt"
for run in cold cached; do
  start=$(date +%s)
  FIT_TIMEOUT="${FIT_TIMEOUT:-280}" bash benchmarks/gpu_fit.sh > /dev/null
  echo "$run: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/device.txt"
  mv "$OUT/population_fit.json" "$OUT/fit_$run.json"
  grep -E "Finished (XLA compilation|tracing)" "$OUT/population_fit.err" \
    | awk '$(NF-1) > 0.5' > "$OUT/compile_$run.txt"
  grep -vE "Compiling|Finished|Argument mapping|^ *$" "$OUT/population_fit.err" \
    | tail -60 > "$OUT/progress_$run.txt"
  rm -f "$OUT/population_fit.err"
done
# then the GPU tests of the fits (patient and population, GPU against CPU)
unset JAX_LOG_COMPILES
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -p no:cacheprovider \
  -k "fit" tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
