"""The public API: explicit ``__all__``, docstrings, and no global side effects."""

import importlib
import inspect
import subprocess
import sys
import types

import pytest

PUBLIC_MODULES = [
    "isletfit",
    "isletfit.model",
    "isletfit.data",
    "isletfit.metrics",
    "isletfit.cohort",
    "isletfit.fitting",
    "isletfit.report",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_exactly_the_public_names(name):
    module = importlib.import_module(name)
    public = {
        k
        for k, v in vars(module).items()
        if not k.startswith("_")
        and not isinstance(v, types.ModuleType)
        and k != "annotations"
    }
    assert set(module.__all__) == public
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_export_has_a_docstring(name):
    module = importlib.import_module(name)
    assert module.__doc__
    for export in module.__all__:
        obj = getattr(module, export)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name}.{export} has no docstring"


def test_import_changes_no_jax_setting():
    code = (
        "import jax\n"
        "before = {k: getattr(jax.config, k) for k in "
        "['jax_enable_x64', 'jax_numpy_dtype_promotion', 'jax_numpy_rank_promotion', "
        "'jax_platforms', 'jax_default_matmul_precision']}\n"
        "import isletfit, isletfit.model, isletfit.data, isletfit.metrics\n"
        "after = {k: getattr(jax.config, k) for k in before}\n"
        "assert before == after, (before, after)\n"
        "assert not jax.config.jax_enable_x64\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_import_is_light():
    """Plotting and the CLI's terminal libraries load only when used."""
    code = (
        "import sys, isletfit, isletfit.model, isletfit.data, isletfit.metrics\n"
        "heavy = [m for m in ('matplotlib', 'rich') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_import_does_not_start_a_jax_backend():
    """So that a user can still choose devices (e.g. jax_num_cpu_devices) after importing."""
    code = (
        "from jax._src import xla_bridge as xb\n"
        "import isletfit, isletfit.model, isletfit.data, isletfit.metrics\n"
        "import isletfit.fitting, isletfit.cohort, isletfit.report, isletfit._cli\n"
        "assert not xb._backends, 'a JAX backend was started on import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
