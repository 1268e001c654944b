"""Test configuration: float64 and strict dtype promotion, set here and never on import."""

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
# A persistent compilation cache for the run, its worker processes and the
# subprocesses the tests start (they inherit the environment): a program compiled
# before, by another process or an earlier run, is loaded instead of compiled (a rerun
# of the subprocess-heavy tests: 422 -> 334 s on the 2-core CPU). Results do not
# depend on it. Set JAX_COMPILATION_CACHE_DIR to use another directory.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"),
)

import jax
import pytest

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
