"""Shared helpers of the benchmark scripts: timing, machine description, output."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax


def parse_args(description: str, *flags: tuple[str, str]) -> argparse.Namespace:
    """The flags every benchmark takes (``--quick``, ``--json``) and ``flags``.

    Args:
        description: What the script measures.
        flags: Further boolean flags, as ``(name, help)`` pairs.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small version, < 1 min")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    for name, text in flags:
        parser.add_argument(name, action="store_true", help=text)
    return parser.parse_args()


def machine() -> dict[str, str | int]:
    """Where the figures were measured."""
    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "cpu_count": os.cpu_count() or 0,
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }


def timed(fn, *args, repeats: int = 3) -> tuple[float, float, object]:
    """(first call incl. compilation [s], best of ``repeats`` later calls [s], output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return first, best, out


def report(figures: dict, *, as_json: bool, title: str) -> None:
    """Print the figures as one JSON object or as an aligned table."""
    if as_json:
        print(json.dumps(figures, sort_keys=True))
        return
    print(title)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")
