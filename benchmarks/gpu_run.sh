#!/usr/bin/env bash
# The GPU checks in one go (device machine with JAX+CUDA preinstalled; no venv there):
# the gpu-marked tests, then the benchmarks, each as JSON into $OUT.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/isletfit-gpu}"; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 150 python3 benchmarks/cohort.py --json > "$OUT/cohort.json" 2> "$OUT/cohort.err"
timeout 150 python3 benchmarks/simulate.py --json > "$OUT/simulate.json" 2> "$OUT/simulate.err"
timeout 60 python3 benchmarks/fit.py --quick --json > "$OUT/fit_quick.json" 2> "$OUT/fit.err"
tail -3 "$OUT"/*.err
ls -la "$OUT"
