#!/usr/bin/env bash
# The GPU checks in one go (device machine with JAX+CUDA preinstalled; no venv there):
# the fixed-grid GPU test, then the forward benchmarks, each as JSON into $OUT.
# (The other gpu-marked tests: `python3 -m pytest -m gpu tests/test_gpu.py`, 135 s.)
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/isletfit-gpu}"; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import jax, diffrax, equinox; print(jax.__version__, diffrax.__version__, equinox.__version__, jax.devices())" | tee -a "$OUT/device.txt"
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -k fixed_grid tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
cd benchmarks
timeout 170 python3 grid.py --json --sizes 4096,65536,262144 --days 1 --variants grid,grid_f32,grid_rk35 > "$OUT/grid_d1.json" 2> "$OUT/grid_d1.err"
timeout 150 python3 grid.py --json --sizes 1024,8192,32768 --days 14 --baseline-n 16 --variants grid,grid_f32,grid_rk35 > "$OUT/grid_d14.json" 2> "$OUT/grid_d14.err"
timeout 170 python3 population.py --json --grid --forward-only --sizes 1000,10000 --base-patients 4 --chunk-size 2000 --forward-budget-s 20 > "$OUT/population_forward.json" 2> "$OUT/population_forward.err"
tail -4 "$OUT"/*.err
ls -la "$OUT"
