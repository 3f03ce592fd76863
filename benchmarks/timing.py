"""How every benchmark times and labels what it measures, in one place.

A variant is a function of no arguments that runs the work once and returns when it is done
(:func:`blocking` waits for JAX's asynchronous dispatch). Each is called untimed first (it
compiles and warms up), then the timed calls alternate between the variants, so that a shared
machine's noise falls on all of them alike; results are medians, and ratios are taken between
variants of the same run only. A result's markdown starts with its title, then
:func:`header`: the command that made it and the machine it ran on.
"""

from __future__ import annotations

import functools
import math
import shlex
import statistics
import sys
import time
from typing import Callable


def blocking(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` that returns only when its JAX arrays are computed (``jax.block_until_ready``)."""

    def run():
        import jax

        return jax.block_until_ready(fn())

    return run


def time_calls(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    return time_all({"fn": fn}, repeats, warmup=warmup)["fn"]


def time_all(run: dict, repeats: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Per variant of ``run`` (name -> ``fn()``), the seconds of ``repeats`` calls: each variant
    is called ``warmup`` times untimed, then the timed calls go round the variants in turn."""
    for fn in run.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in run}
    for _ in range(repeats):
        for k, fn in run.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def medians(times: dict) -> dict:
    """The median of each list in ``times``."""
    return {k: statistics.median(v) for k, v in times.items()}


def median_seconds(run: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant of ``run``, timed by :func:`time_all`."""
    return medians(time_all(run, repeats))


def window_steps(run, min_seconds: float = 1.0, at_least: int = 10) -> int:
    """Steps per timed window so that one lasts about ``min_seconds`` (at least ``at_least``
    steps) for a ``run(n)`` of ``n`` steps: 10 steps of ResNet-20 take seconds on a 2-core CPU
    but ~35 ms on an H100, too short for the timer and the host's noise."""
    start = time.perf_counter()
    run(at_least)
    seconds = time.perf_counter() - start
    return max(at_least, math.ceil(at_least * min_seconds / seconds))


def alternating_windows(runners: dict, steps: int | None, repeats: int, batch_size: int):
    """Warm each ``run(n)`` of ``runners`` up, then time ``repeats`` windows of ``steps``
    steps per runner (``None``: :func:`window_steps` of the first runner), alternating between
    runners as :func:`time_all` does.

    Returns:
        ``(images_per_second, medians, steps)``: per runner, the windows' rates and their
        median; the steps per window used.
    """
    for run in runners.values():  # compile and warm up
        run(2)
    if steps is None:
        steps = window_steps(next(iter(runners.values())))
    windows = {k: functools.partial(run, steps) for k, run in runners.items()}
    times = time_all(windows, repeats, warmup=0)
    ips = {k: [steps * batch_size / t for t in v] for k, v in times.items()}
    return ips, medians(ips), steps


def command(module: str, argv=None) -> str:
    """The command a result records: ``python -m benchmarks.<module>`` and ``argv`` (None:
    this process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", f"benchmarks.{module}", *args])


def header(command_line: str, env: dict, packages=("jax",), extra: str = "") -> list[str]:
    """The lines under a result's title: ``Command: `...` `` and the machine, the
    ``packages``' versions and the date (:func:`jpanning.report.machine_line` of ``env``,
    :func:`jpanning.report.environment`'s record)."""
    from jpanning import report

    return [f"Command: `{command_line}`  ", report.machine_line(env, packages, extra)]
