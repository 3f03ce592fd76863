"""Benchmark harness: every method at every sparsity, against dense training, over seeds.

    python -m benchmarks.compare --preset cpu-hour
    python -m benchmarks.compare --model resnet20 --dataset fashion_mnist \\
        --ratios 0.9 0.95 0.98 0.99 --methods dense random snip panning rlpanning \\
        --seeds 3 --epochs 1 --name my-grid
    python -m benchmarks.compare --preset cpu-hour --report-only   # tables and plots only

Each cell (method, ratio, seed) is one run (a :class:`jpanning.config.RunConfig` run by
:func:`jpanning.experiment.run`, in this process) with the grid's training recipe; dense training runs once per seed. A cell's folder under
``benchmarks/results/<name>/cells/`` is named by a hash of everything that defines it, and a
cell whose ``results.json`` (or ``failed.json``, for a method that cuts the network) is there
is not run again: an interrupted grid continues where it stopped, and deleting a cell's
folder recomputes that cell only. RL Panning searches once per seed (at the first ratio) and
screens the other ratios with that cell's saved policy, as the method intends. PuRL and its
baseline ``uniform`` prune the network the seed's dense cell trained (and fine-tune it for the
grid's epochs); ``uniform`` prunes to the sparsity the PuRL cell reached.

Writes to ``benchmarks/results/<name>/``: ``runs.csv`` (one row per cell), ``table.md``
(mean ± std per method and ratio, dense as the reference row, the best method per ratio in
bold, Panning and RL Panning against the best baseline, costs), ``accuracy.png``,
``density.png`` and ``screen_time.png``. ``--readme README.md`` copies the table between the
markers ``<!-- benchmark:NAME:start -->`` and ``<!-- benchmark:NAME:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import shlex
import sys
import time

import numpy as np

from benchmarks.presets import PRESETS, Grid
from jpanning import cli, cpu, experiment, report
from jpanning.checkpoint import Interrupted
from jpanning import config as config_lib
from jpanning.config import RunConfig
from jpanning.errors import JPanningError, RunFailed
from jpanning.methods import METHODS
from jpanning.rundir import read_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SEARCH_FLAGS = ("--search", "--preset", "--agent-steps")  # run.py: RL Panning trains a policy
TRAINED_METHODS = tuple(m for m, entry in METHODS.items() if entry.trained)  # purl, uniform
OURS = ("panning", "rlpanning")  # the methods the verdict compares with the best baseline
COSTS = "<!-- costs -->"  # where table.md's cost section starts (the README stops there)
CSV_FIELDS = (
    "model",
    "dataset",
    "epochs",
    "method",
    "ratio",
    "seed",
    "status",
    "test_accuracy",
    "test_loss",
    "sparsity",
    "effective_sparsity",
    "kept",
    "total",
    "flops_fraction",
    "flops_remaining",
    "flops_dense",
    "screen_seconds",
    "search_seconds",
    "train_seconds",
    "error",
    "device",
    "cell",
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid. ``ratio`` is None for dense training."""

    method: str
    ratio: float | None
    seed: int
    argv: tuple[str, ...]  # what defines it, as run.py arguments (without --out, --policy)
    config: RunConfig  # the run, without its folder and the files it takes from other cells
    policy_from: Cell | None = None  # the RL Panning cell whose policy this one screens with
    ratio_from: Cell | None = None  # the PuRL cell whose achieved sparsity this one prunes to
    pretrained_from: Cell | None = None  # the dense cell whose network this one prunes

    @property
    def key(self) -> str:
        # pretrained_from is left out: a cell without that file trains the same network itself
        parts = _legacy_argv(self.argv, self.config)
        parts += [c.key for c in (self.policy_from, self.ratio_from) if c]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        ratio = "dense" if self.ratio is None else f"{self.ratio:g}"
        return f"{self.method}-{ratio}-seed{self.seed}-{self.key}"


def _legacy_argv(argv: tuple[str, ...], config: RunConfig) -> list[str]:
    """The arguments a cell's key hashes. ``--collapse-shield off`` is left out: a cell
    screened before the shield existed ran without it, so its key (and its results) stay the
    shield-off cell's; a method that reads the shield with it on (the default) adds the
    setting, so its cells are new."""
    parts, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--collapse-shield":
            skip = True
        else:
            parts.append(arg)
    shield = config.pruning.option("collapse_shield")
    if shield not in (None, "off"):  # a method that reads the shield, with it on
        parts += ["--collapse-shield", shield]
    return parts


def cells_of(grid: Grid) -> list[Cell]:
    """The grid's cells, seed by seed (a stopped run has whole seeds done first).

    Dependencies: RL Panning, when ``run_args`` give it a search (``--search``, ``--preset``,
    ``--agent-steps``), searches at its first ratio and screens the later ones with that
    policy (without one, every cell screens with the policy jpanning ships);
    PuRL and uniform prune the network of the seed's dense cell (they train it themselves when
    its model.npz is missing, with the same result); uniform, when PuRL is in the grid, prunes
    to the sparsity the PuRL cell reached, so the two are compared at the same sparsity.
    """
    common = ["--model", grid.model, "--dataset", grid.dataset, "--epochs", str(grid.epochs)]
    settings = {"model": grid.model, "dataset": grid.dataset, "epochs": grid.epochs}
    if grid.train_limit:
        common += ["--train-limit", str(grid.train_limit)]
        settings["train_limit"] = grid.train_limit
    if grid.test_limit:
        common += ["--test-limit", str(grid.test_limit)]
        settings["test_limit"] = grid.test_limit
    common += list(grid.run_args)
    settings |= cli.settings_of(grid.run_args)  # the grid's further run.py arguments
    # dense first, uniform after the PuRL cell it matches
    methods = [m for m in grid.methods if m != "uniform"] + [
        m for m in grid.methods if m == "uniform"
    ]
    cells = []
    searches = any(a in grid.run_args for a in SEARCH_FLAGS)
    for seed in range(grid.seeds):
        seeded = common + ["--seed", str(seed)]
        dense = None
        if "dense" in methods:
            config = _config(settings, seed=seed, method="dense")
            dense = Cell("dense", None, seed, tuple(seeded + ["--method", "dense"]), config)
            cells.append(dense)
        search = None
        for ratio in grid.ratios:
            purl = None
            for method in methods:
                if method == "dense":
                    continue
                argv = seeded + ["--method", method]
                config = _config(settings, seed=seed, method=method)
                deps = {}
                if method in TRAINED_METHODS:
                    deps["pretrained_from"] = dense
                if method == "uniform" and purl is not None:
                    deps["ratio_from"] = purl  # its --ratio is PuRL's achieved sparsity
                else:
                    argv += ["--ratio", repr(ratio)]
                    config = config.replace(ratio=ratio)
                if method == "rlpanning" and search is not None:
                    deps["policy_from"] = search
                cells.append(Cell(method, ratio, seed, tuple(argv), config, **deps))
                if method == "rlpanning" and search is None and searches:
                    search = cells[-1]
                if method == "purl":
                    purl = cells[-1]
    return cells


def _config(settings: dict, **cell) -> RunConfig:
    """A cell's config: the grid's settings and the cell's, less the methods' options that
    its method does not read (the grid gives them to every method)."""
    every, own = config_lib.option_fields(), config_lib.option_fields(cell["method"])
    given = {k: v for k, v in (settings | cell).items() if k not in every or k in own}
    return RunConfig.from_flat(given)


def cell_status(cell: Cell, cells_dir: str) -> str | None:
    """'ok' or 'failed' when the cell has finished, else None (also for a cell refused under
    the old rule, :func:`refused_by_old_rule`: it runs again)."""
    out = os.path.join(cells_dir, cell.dirname)
    if os.path.isfile(os.path.join(out, "results.json")):
        return "ok"
    failed = os.path.join(out, "failed.json")
    if os.path.isfile(failed) and not refused_by_old_rule(read_json(failed)):
        return "failed"
    return None


def _old_refusal(cell: Cell, cells_dir: str) -> bool:
    path = os.path.join(cells_dir, cell.dirname, "failed.json")
    return os.path.isfile(path) and refused_by_old_rule(read_json(path))


def refused_by_old_rule(record) -> bool:
    """A failed.json from before the connectivity rule (jpanning.experiment._check_masks):
    that rule refused every mask that emptied a layer ("the network is cut"), ResNet masks
    whose shortcuts keep them connected included; such cells are run again."""
    return (
        isinstance(record, dict)
        and "disconnected" not in record
        and "the network is cut" in str(record.get("error", ""))
    )


class _DataCache:
    """Load each (dataset, limits, seed) once for all the cells that train on it.

    With ``data_file`` (a ``.npz`` of raw splits, ``benchmarks.device_search pack``) the
    splits come from that file instead of tensorflow-datasets, through the same
    :func:`jpanning.data.from_splits` (a machine without tfds, such as the lent GPU)."""

    def __init__(self, data_file: str | None = None):
        self._loaded = {}
        self._splits = None
        if data_file is not None:
            from benchmarks.device_search import unpack

            self._splits = unpack(data_file)

    def get(self, config: RunConfig):
        from jpanning import data

        d = config.data
        key = (d.dataset, d.data_dir, d.train_limit, d.test_limit, config.seed)
        if key not in self._loaded:
            self._loaded = {}  # one at a time: the grid goes seed by seed
            limits = {"train_limit": d.train_limit, "test_limit": d.test_limit}
            if self._splits is None:
                loaded = data.load_dataset(d.dataset, d.data_dir, **limits, seed=config.seed)
            else:
                name, splits, num_classes, source = self._splits
                if name != d.dataset:
                    raise JPanningError(f"--data-file holds {name}, the grid needs {d.dataset}")
                loaded = data.from_splits(
                    name, splits, num_classes, source, **limits, seed=config.seed
                )
            self._loaded[key] = loaded
        return self._loaded[key]


def shard(cells: list[Cell], k: int, n: int) -> list[Cell]:
    """The cells of share ``k`` (0-based) of ``n``, for ``n`` workers that run one grid side
    by side: a cell goes with the cells it depends on (RL Panning's search, PuRL's dense
    network), and the groups are dealt round-robin in grid order."""
    groups: dict[str, int] = {}

    def root(cell: Cell) -> Cell:
        while deps := [c for c in (cell.pretrained_from, cell.policy_from, cell.ratio_from) if c]:
            cell = deps[0]
        return cell

    out = []
    for cell in cells:
        group = groups.setdefault(root(cell).dirname, len(groups))
        if group % n == k:
            out.append(cell)
    return out


def run_cell(cell: Cell, cells_dir: str, data_cache: _DataCache, data_dir: str | None) -> str:
    """Run one cell with :func:`jpanning.experiment.run`; its log goes to the cell's
    ``log.txt``, which starts with the equivalent ``run.py`` command.

    A method or recipe that fails on the problem (:class:`RunFailed`: a layer pruned to
    nothing, a disconnected network, a NaN loss) is a result of the grid, kept in
    ``failed.json``; any other error (missing data, a bad argument) stops the harness.
    """

    out = os.path.join(cells_dir, cell.dirname)
    changes = {"out": out, "no_progress": True}
    if data_dir:
        changes["data_dir"] = data_dir
    if cell.policy_from is not None:
        policy = os.path.join(cells_dir, cell.policy_from.dirname, "policy.msgpack")
        if not os.path.isfile(policy):
            raise JPanningError(f"cell {cell.dirname} needs the policy {policy}, which is missing")
        changes["policy"] = policy
    if cell.pretrained_from is not None:
        pretrained = os.path.join(cells_dir, cell.pretrained_from.dirname, "model.npz")
        if os.path.isfile(pretrained):
            changes["pretrained"] = pretrained
    os.makedirs(out, exist_ok=True)
    stale = os.path.join(out, "failed.json")
    if os.path.isfile(stale) and cell_status(cell, cells_dir) is None:
        os.remove(stale)  # refused under the old rule: this run's outcome replaces it
    if cell.ratio_from is not None:
        if cell_status(cell.ratio_from, cells_dir) != "ok":
            report.write_json(
                os.path.join(out, "failed.json"),
                {"error": f"the PuRL cell it matches ({cell.ratio_from.dirname}) failed: cut"},
            )
            return "failed"
        with open(os.path.join(cells_dir, cell.ratio_from.dirname, "results.json")) as f:
            changes["ratio"] = json.load(f)["sparsity"]["sparsity"]
    config = cell.config.replace(**changes)
    argv = cli.argv_of_config(config)  # what run.py runs it with (cell.argv names its folder)
    dataset = data_cache.get(config)
    log = io.StringIO()
    status = "ok"
    resumed = experiment.interrupted_run(out)  # a cell stopped mid-way (a signal, a crash)
    try:
        with contextlib.redirect_stdout(log):
            if resumed:
                print("run.py " + shlex.join(["--resume", out, "--no-progress"]))
                experiment.resume(out, dataset, no_progress=True)
            else:
                print("run.py " + shlex.join(argv))
                experiment.run(config, dataset)
    except RunFailed as e:
        status = "failed"
        path = os.path.join(out, "failed.json")
        recorded = read_json(path) or {}  # the run's own record (its run_id) stays
        record = {"error": str(e), "disconnected": e.disconnected, "argv": argv}
        if e.disconnected:
            record["chance_accuracy"] = 1.0 / dataset.num_classes
        report.write_json(path, recorded | record | report.environment())
    finally:
        before = b""
        if resumed and os.path.isfile(os.path.join(out, "log.txt")):
            with open(os.path.join(out, "log.txt"), "rb") as f:
                before = f.read()  # the stopped part's log stays in front
        report.atomic_write_bytes(os.path.join(out, "log.txt"), before + log.getvalue().encode())
    return status


def load_row(cell: Cell, cells_dir: str) -> dict:
    """One CSV row from a finished cell's files."""
    out = os.path.join(cells_dir, cell.dirname)
    row = dict.fromkeys(CSV_FIELDS, "")
    row |= {
        "method": cell.method,
        "ratio": "" if cell.ratio is None else cell.ratio,
        "seed": cell.seed,
        "cell": cell.dirname,
    }
    status = cell_status(cell, cells_dir)
    if status is None:  # refused under the old rule, not rerun yet: marked, never a value
        return row | {"status": "old_rule", "error": "refused under the old rule (not rerun)"}
    if status == "failed":
        with open(os.path.join(out, "failed.json")) as f:
            failed = json.load(f)
        row["device"] = (failed.get("device") or {}).get("platform", "")
        # the cell's folder where it ran (another machine's) -> cells/NAME
        row |= {
            "status": "failed",
            "error": re.sub(r"\S*/cells/(?=\S)", "cells/", failed["error"]),
        }
        if failed.get("disconnected"):  # the literature's record: chance accuracy, counted
            row |= {
                "status": "chance",
                "test_accuracy": failed["chance_accuracy"],
                "effective_sparsity": 1.0,
            }
        return row
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    agent = r.get("rl") or r.get("purl") or {}  # RL Panning's or PuRL's agent training
    search = agent.get("search_seconds") or 0.0
    row |= {
        "status": "ok",
        "device": (r.get("device") or {}).get("platform", ""),
        "test_accuracy": r["test_accuracy"],
        "test_loss": r["test_loss"],
        "sparsity": r["sparsity"]["sparsity"],
        "effective_sparsity": r["effective_sparsity"],
        "kept": r["sparsity"]["kept"],
        "total": r["sparsity"]["total"],
        "flops_fraction": r["flops"]["fraction"],
        "flops_remaining": r["flops"]["remaining"],
        "flops_dense": r["flops"]["dense"],
        "screen_seconds": r["prune_seconds"] - search,
        "search_seconds": search,
        "train_seconds": r["train_seconds"],
    }
    return row


def _cell_meta(cells: list[Cell], cells_dir: str) -> list[dict]:
    """Environment records (date, machine, versions) of the finished cells."""
    metas = []
    for cell in cells:
        status = cell_status(cell, cells_dir)
        if status is None:
            continue
        name = "results.json" if status == "ok" else "failed.json"
        with open(os.path.join(cells_dir, cell.dirname, name)) as f:
            r = json.load(f)
        metas.append({k: r.get(k) for k in ("versions", "device", "machine", "date")})
    return metas


# ---------------------------------------------------------------------------------------------
# Aggregation and the table


@dataclasses.dataclass
class Stat:
    """Mean and sample std (ddof=1) of one method at one ratio over its seeds."""

    values: list[float]
    failed: int
    errors: list[str]
    chance: int = 0  # seeds whose mask was disconnected, at chance accuracy among the values
    old_rule: int = 0  # seeds refused under the old rule and not rerun (neither value nor fail)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    @property
    def outcome(self) -> str:
        """How the failed seeds ended: 'cut' (a layer or every path pruned), 'diverged', or
        'failed'."""
        if self.errors and all("cut" in e for e in self.errors):
            return "cut"
        if self.errors and all("diverged" in e for e in self.errors):
            return "diverged"
        return "failed"


def aggregate(rows: list[dict], field: str = "test_accuracy") -> dict[tuple[str, object], Stat]:
    """``{(method, ratio): Stat}``; dense rows have ratio ``''``."""
    stats: dict[tuple[str, object], Stat] = {}
    for row in rows:
        stat = stats.setdefault((row["method"], row["ratio"]), Stat([], 0, []))
        if row["status"] == "ok":
            stat.values.append(float(row[field]))
        elif row["status"] == "old_rule":
            stat.old_rule += 1
        elif row["status"] == "chance":
            if row[field] != "":
                stat.values.append(float(row[field]))
            stat.chance += 1
        else:
            stat.failed += 1
            stat.errors.append(row["error"])
    return stats


def _fmt(stat: Stat | None, digits: int = 4, expected: int | None = None) -> str:
    if stat is None:
        return "not run"
    if stat.n == 0 and stat.old_rule and not stat.failed:
        return f"old-rule cut ({stat.old_rule}), not rerun"
    if stat.n == 0:
        return f"{stat.outcome} ({stat.failed}/{stat.failed})" if stat.failed else "not run"
    text = f"{stat.mean:.{digits}f}" + (f" ± {stat.std:.{digits}f}" if stat.n > 1 else "")
    short = expected is not None and stat.n + stat.failed < expected  # says k/expected below
    notes = [] if stat.n > 1 or expected in (None, 1) or short else ["1 seed"]
    if stat.chance:
        notes.append(f"{stat.chance} disconnected")
    if stat.failed:
        notes.append(f"{stat.failed} {stat.outcome}")
    if stat.old_rule:
        notes.append(f"{stat.old_rule} old-rule cut, not rerun")
    if expected is not None and stat.n + stat.failed < expected:
        notes.append(f"{stat.n + stat.failed}/{expected} seeds")
    return text + (f" ({', '.join(notes)})" if notes else "")


def best_methods(stats, grid: Grid, exclude=("dense",)) -> dict[float, str | None]:
    """The method with the highest mean accuracy at each ratio (None if nothing ran); a
    method that failed (cut the network) in any seed is not a candidate."""
    best = {}
    for ratio in grid.ratios:
        candidates = [
            (stats[(m, ratio)].mean, m)
            for m in grid.methods
            if m not in exclude
            and (m, ratio) in stats
            and stats[(m, ratio)].n
            and not stats[(m, ratio)].failed
        ]
        best[ratio] = max(candidates)[1] if candidates else None
    return best


def best_rows(stats, grid: Grid) -> list[str]:
    """The best test accuracy among all pruning methods at each sparsity, and how far each of
    Panning and RL Panning is from it (Markdown lines; none when neither is in the grid)."""
    ours = [m for m in OURS if m in grid.methods]
    if not ours:
        return []
    best = best_methods(stats, grid)
    head = "| | " + " | ".join(f"sparsity {r:g}" for r in grid.ratios) + " |"
    lines = ["", "The best method at each sparsity, and the gap of ours to it:", "", head]
    lines.append("|---|" + "---|" * len(grid.ratios))
    cells = [f"{best[r]} {stats[(best[r], r)].mean:.4f}" if best[r] else "-" for r in grid.ratios]
    lines.append("| best | " + " | ".join(cells) + " |")
    for m in ours:
        row = []
        for r in grid.ratios:
            st = stats.get((m, r))
            if not best[r] or st is None or not st.n:
                row.append("-")
            elif best[r] == m:
                row.append("best")
            else:
                row.append(f"{st.mean - stats[(best[r], r)].mean:+.4f}")
        lines.append(f"| {m} − best | " + " | ".join(row) + " |")
    return lines


def verdicts(stats, grid: Grid) -> list[tuple[float, str, str, str]]:
    """At each ratio: (ratio, method, what it is compared with, verdict).

    Panning and RL Panning are compared with the best baseline that also prunes at
    initialization (a higher mean accuracy "beats" it); PuRL with uniform per-layer pruning at
    the same sparsity, its own baseline. A gap within one std (the larger of the two) is a
    tie; a method that cut the network in every seed where the baseline trained loses.
    """
    baseline_best = best_methods(stats, grid, exclude=("dense",) + OURS + TRAINED_METHODS)
    out = []
    for ratio in grid.ratios:
        pairs = [(m, baseline_best[ratio]) for m in OURS if m in grid.methods]
        if "purl" in grid.methods and "uniform" in grid.methods:
            pairs.append(("purl", "uniform"))
        for method, base in pairs:
            ours, ref = stats.get((method, ratio)), stats.get((base, ratio))
            if ours is None or ref is None or ref.n == 0 or (ours.n == 0 and not ours.failed):
                out.append((ratio, method, base or "-", "no result"))
                continue
            against = f"{base} {ref.mean:.4f}"
            if ours.n == 0:
                verdict = f"loses: {ours.outcome} in {ours.failed}/{ours.failed} seeds"
                out.append((ratio, method, against, verdict))
                continue
            gap = ours.mean - ref.mean
            if abs(gap) <= max(ours.std, ref.std):
                verdict = f"ties with {base}: {gap:+.4f} (within one std)"
            else:
                verdict = f"{'beats' if gap > 0 else 'loses to'} {base}: {gap:+.4f}"
            if ours.failed:
                verdict += f"; {ours.outcome} in {ours.failed} of {ours.n + ours.failed} seeds"
            for m, st in ((method, ours), (base, ref)):
                if st.chance:
                    verdict += (
                        f"; {m} disconnected in {st.chance} of {st.n + st.failed} seeds "
                        "(at chance accuracy, counted)"
                    )
            short = [
                (m, st) for m, st in ((method, ours), (base, ref)) if st.n + st.failed < grid.seeds
            ]
            if short:  # a grid still running: say on how little the verdict rests
                verdict += "; so far " + ", ".join(
                    f"{m} {st.n + st.failed}/{grid.seeds} seeds" for m, st in short
                )
            out.append((ratio, method, against, verdict))
    return out


def _versions_line(metas: list[dict]) -> list[str]:
    """Machine, device and versions of the cells; several lines if cells differ."""
    seen = {}
    for m in metas:
        if not m.get("versions"):
            continue
        v = m["versions"]
        machine = m.get("machine") or {}
        device = m.get("device") or {}
        line = (
            f"{machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), "
            f"{device.get('platform', '?')} x{device.get('count', '?')} "
            f"({device.get('kind', '?')}); "
            + ", ".join(
                f"{k} {v[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax") if k in v
            )
        )
        seen[line] = seen.get(line, 0) + 1
    return [f"{line} ({n} cells)" if len(seen) > 1 else line for line, n in seen.items()]


def render_table(name: str, grid: Grid, rows: list[dict], metas: list[dict], command: str) -> str:
    """The Markdown report of a grid; every figure comes from ``rows``."""
    acc = aggregate(rows)
    ratios = grid.ratios
    methods = [m for m in grid.methods if m != "dense"]
    best = best_methods(acc, grid)
    dates = sorted(m["date"] for m in metas if m.get("date"))
    lines = [
        f"#### Benchmark `{name}`: {grid.model} on {grid.dataset}",
        "",
        f"- command: `{command}`",
        f"- cells: {len(dates)} of {len(cells_of(grid))} finished"
        + (f", written {dates[0][:16]} to {dates[-1][:16]} UTC" if dates else ""),
        "- machine: " + "; ".join(_versions_line(metas) or ["-"]),
        f"- recipe: {grid.epochs} epoch(s)"
        + (f", {grid.train_limit} training images" if grid.train_limit else ", all training images")
        + (f", {grid.test_limit} test images" if grid.test_limit else "")
        + f", {grid.seeds} seeds, `run.py` defaults"
        + (f" and `{' '.join(grid.run_args)}`" if grid.run_args else ""),
        "",
        "Test accuracy at the last epoch, mean ± std over seeds (std with ddof=1); **bold**: "
        "the best pruning method at that sparsity. A mask whose emptied layers the network "
        "routes around (a ResNet's residual branches) is trained. *k disconnected*: in k "
        "seeds no input reached the output (effective sparsity 1); as in the literature, "
        "those seeds count at chance accuracy (1/classes) in the mean and std. *old-rule "
        "cut*: refused under the older rule, which also refused routed-around masks, and not "
        "rerun on this grid's machine yet (no value); "
        "*diverged*: the loss turned NaN. The reasons are listed under the tables.",
        "",
        "| method | " + " | ".join(f"sparsity {r:g}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    if "dense" in grid.methods:
        dense = _fmt(acc.get(("dense", "")), expected=grid.seeds)
        lines.append("| dense (reference) | " + " | ".join(dense for _ in ratios) + " |")
    devices = {row["device"] for row in rows if row["device"]}
    for m in methods:
        cells = []
        for r in ratios:
            text = _fmt(acc.get((m, r)), expected=grid.seeds)
            text = f"**{text}**" if best[r] == m else text
            if len(devices) > 1 and (m, r) in acc:  # a grid measured on several machines
                ran = sorted(
                    {row["device"] for row in rows if (row["method"], row["ratio"]) == (m, r)}
                    - {""}
                )
                text += f" [{'+'.join(ran)}]"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if len(devices) > 1:
        lines += [
            "",
            f"*[{'/'.join(sorted(devices))}]*: where the cell's seeds ran. CPU and GPU runs of one "
            "seed differ (by ~0.016 on one ResNet-20 cell): compare cells of one machine only.",
        ]
    if any(m in grid.methods for m in TRAINED_METHODS):
        achieved = aggregate([r for r in rows if r["method"] == "purl"], "sparsity")
        reached = ", ".join(
            f"{achieved[('purl', r)].mean:.4f} at {r:g}"
            for r in ratios
            if ("purl", r) in achieved and achieved[("purl", r)].n
        )
        lines += [
            "",
            f"PuRL and uniform prune the dense row's network (trained {grid.epochs} epoch(s)) "
            f"and fine-tune it {grid.epochs} more, so they train twice as long as the dense row. "
            + (
                f"PuRL's sparsity is a target; its thresholds reached, on average, {reached} "
                "(uniform is pruned to each cell's PuRL sparsity)."
                if reached
                else ""
            ),
        ]
    lines += best_rows(acc, grid)
    ours = verdicts(acc, grid)
    if ours:
        said = []
        if any(m in grid.methods for m in OURS):
            said.append(
                "Panning and RL Panning against the best baseline (the best mean of the other "
                "methods that prune at initialization)"
            )
        if "purl" in grid.methods and "uniform" in grid.methods:
            said.append(
                "PuRL against uniform per-layer magnitude pruning of the same trained network "
                "at the sparsity PuRL reached"
            )
        lines += [
            "",
            "; ".join(said) + ":",
            "",
            "| sparsity | method | compared with | verdict |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r:g} | {m} | {b} | {v} |" for r, m, b, v in ours]
    fields = {
        f: aggregate(rows, f)
        for f in (
            "sparsity",
            "effective_sparsity",
            "flops_fraction",
            "screen_seconds",
            "search_seconds",
            "train_seconds",
        )
    }
    lines += [
        "",
        COSTS,
        "Sparsity and cost, means over seeds: achieved and effective sparsity (weights that "
        "still lie on an input-output path), forward FLOPs left by the mask (fraction of the "
        "dense network's conv/dense multiply-adds), seconds to screen, seconds of agent "
        "training (RL Panning: once per seed; PuRL: every cell), seconds to train.",
        "",
        "| method | sparsity | achieved | effective | FLOPs left | screen s | search s | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ([("dense", "")] if "dense" in grid.methods else []) + [
        (m, r) for m in methods for r in ratios
    ]
    for key in keys:
        got = fields["sparsity"].get(key)
        if got is None or got.n == 0:
            continue
        f = {name: fields[name][key].mean for name in fields}
        search = f["search_seconds"]
        lines.append(
            f"| {key[0]} | {key[1] if key[1] != '' else 0:g} | {f['sparsity']:.6f} | "
            f"{f['effective_sparsity']:.4f} | {f['flops_fraction']:.4f} | "
            f"{f['screen_seconds']:.2f} | {f'{search:.1f}' if search else '-'} | "
            f"{f['train_seconds']:.1f} |"
        )
    failures = [(m, r, e) for (m, r), s in acc.items() for e in sorted(set(s.errors)) if s.failed]
    if failures:
        lines += ["", "Cells that failed, and why:", ""]
        lines += [f"- {m} at {r}: {e}" for m, r, e in failures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def plot_accuracy(grid: Grid, rows: list[dict], path: str, title: str) -> None:
    """Test accuracy against sparsity, mean ± std per method; dense as a band."""
    plt = report.pyplot()
    acc = aggregate(rows)
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = np.arange(len(grid.ratios))
    methods = [m for m in grid.methods if m != "dense"]
    width = 0.5 / max(len(methods), 1)
    if ("dense", "") in acc and acc[("dense", "")].n:
        d = acc[("dense", "")]
        ax.axhline(d.mean, color="black", ls="--", lw=1, label="dense")
        ax.axhspan(d.mean - d.std, d.mean + d.std, color="black", alpha=0.1)
    for i, m in enumerate(methods):
        pts = [(x, acc[(m, r)]) for x, r in zip(xs, grid.ratios) if (m, r) in acc and acc[(m, r)].n]
        if not pts:
            continue
        offset = (i - (len(methods) - 1) / 2) * width
        ax.errorbar(
            [x + offset for x, _ in pts],
            [s.mean for _, s in pts],
            yerr=[s.std for _, s in pts],
            marker="o",
            ms=4,
            capsize=3,
            lw=1.2 if m not in OURS else 2.2,
            label=m,
        )
    ax.set_xticks(xs, [f"{r:g}" for r in grid.ratios])
    ax.set_xlabel("sparsity (fraction of prunable weights removed)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower left")
    report.save_png(fig, path)


def plot_density(grid: Grid, cells: list[Cell], cells_dir: str, ratio: float, path: str) -> None:
    """Per-layer density of each method's mask at one ratio (its first seed that finished)."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * 30), 5))
    names = None
    for cell in cells:
        if cell.ratio != ratio or cell_status(cell, cells_dir) != "ok":
            continue
        if any(line.get_label() == cell.method for line in ax.get_lines()):
            continue  # one seed per method
        with open(os.path.join(cells_dir, cell.dirname, "results.json")) as f:
            layers = json.load(f)["sparsity"]["layers"]
        names = list(layers)
        ax.plot(
            range(len(names)),
            [max(v["density"], 1e-5) for v in layers.values()],
            marker="o",
            ms=3,
            lw=2.2 if cell.method in OURS else 1.2,
            label=cell.method,
        )
    if names:
        ax.set_xticks(range(len(names)), [n.removesuffix("/kernel") for n in names], rotation=75)
        ax.tick_params(axis="x", labelsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("density (kept fraction; log)")
    ax.set_title(
        f"{grid.model} / {grid.dataset}: per-layer density at sparsity {ratio:g} (first seed)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    report.save_png(fig, path)


def plot_screen_time(grid: Grid, rows: list[dict], path: str) -> None:
    """Seconds to screen per method: median over ratios and seeds, whiskers min to max.

    The median, because a method's first cell also pays its compilation. The agents' training
    (RL Panning's search, once per seed; PuRL's, every cell) are bars of their own.
    """
    plt = report.pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    bars = [
        (m, [r["screen_seconds"] for r in ok if r["method"] == m])
        for m in grid.methods
        if m != "dense"
    ]
    bars += [
        (
            f"{m}\nsearch",
            [r["search_seconds"] for r in ok if r["method"] == m and r["search_seconds"]],
        )
        for m in ("rlpanning", "purl")
    ]
    bars = [(m, np.asarray(v, float)) for m, v in bars if v]
    med = np.array([np.median(v) for _, v in bars])
    low = med - np.array([v.min() for _, v in bars])
    high = np.array([v.max() for _, v in bars]) - med
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(
        range(len(bars)),
        np.maximum(med, 1e-3),
        yerr=[low, high],
        capsize=3,
        color=["tab:orange" if "search" in m else "tab:blue" for m, _ in bars],
    )
    ax.set_xticks(range(len(bars)), [m for m, _ in bars], rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log): median, min to max")
    ax.set_title(f"{grid.model} / {grid.dataset}: time to screen, and agent training (orange)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    report.save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The shell


def write_report(name: str, grid: Grid, cells: list[Cell], out: str, command: str) -> str:
    """runs.csv, table.md and the PNGs (accuracy, density, screening time, PuRL's α where it
    ran) from the finished cells; returns the table."""
    cells_dir = os.path.join(out, "cells")
    status = {c.dirname: cell_status(c, cells_dir) for c in cells}
    done = [c for c in cells if status[c.dirname]]
    old = [c for c in cells if status[c.dirname] is None and _old_refusal(c, cells_dir)]
    recipe = {"model": grid.model, "dataset": grid.dataset, "epochs": grid.epochs}
    rows = [load_row(c, cells_dir) | recipe for c in done + old]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    report.atomic_write_bytes(os.path.join(out, "runs.csv"), buf.getvalue().encode())
    table = render_table(name, grid, rows, _cell_meta(done, cells_dir), command)
    pngs = ["accuracy.png", "density.png", "screen_time.png"]
    purl_cells = [c for c in done if c.method == "purl" and cell_status(c, cells_dir) == "ok"]
    if purl_cells:
        pngs.append("purl_alphas.png")
    screened = _policy_weights(grid, cells, cells_dir)
    if screened:
        pngs.append("fusion_weights.png")
    table += "".join(f"\n![{png[:-4]}]({png})\n" for png in pngs)
    report.atomic_write_bytes(os.path.join(out, "table.md"), table.encode())
    report.write_json(
        os.path.join(out, "table.json"), table_record(name, grid, rows, done, cells_dir, command)
    )
    if screened:
        plot_fusion_weights(grid, screened, os.path.join(out, "fusion_weights.png"))
    title = f"{grid.model} / {grid.dataset}, {grid.epochs} epoch(s), {grid.seeds} seeds"
    plot_accuracy(grid, rows, os.path.join(out, "accuracy.png"), title)
    ratio = grid.density_ratio or grid.ratios[len(grid.ratios) // 2]
    plot_density(grid, done, cells_dir, ratio, os.path.join(out, "density.png"))
    plot_screen_time(grid, rows, os.path.join(out, "screen_time.png"))
    if purl_cells:
        plot_purl_alphas(grid, purl_cells, cells_dir, os.path.join(out, "purl_alphas.png"))
    return table


def table_record(
    name: str, grid: Grid, rows: list[dict], done: list[Cell], cells_dir: str, command: str
) -> dict:
    """table.md as data: the grid, the command, per (method, ratio) the accuracies of every
    seed with mean and std, the failures, the effective sparsity, and the verdicts."""
    acc, effective = aggregate(rows), aggregate(rows, "effective_sparsity")
    stats = []
    for (method, ratio), st in acc.items():
        eff = effective[(method, ratio)]
        stats.append(
            {
                "method": method,
                "ratio": None if ratio == "" else ratio,
                "seeds_ok": st.n,
                "seeds_failed": st.failed,
                "seeds_disconnected": st.chance,
                "failed_as": st.outcome if st.failed else None,
                "accuracy": st.values,
                "accuracy_mean": st.mean if st.n else None,
                "accuracy_std": st.std if st.n else None,
                "effective_sparsity_mean": eff.mean if eff.n else None,
            }
        )
    return {
        "name": name,
        "command": command,
        "grid": dataclasses.asdict(grid),
        "cells": {"finished": len(done), "in_grid": len(cells_of(grid))},
        "machines": _versions_line(_cell_meta(done, cells_dir)),
        "stats": stats,
        "verdicts": [
            {"ratio": r, "method": m, "compared_with": b, "verdict": v}
            for r, m, b, v in verdicts(acc, grid)
        ],
    }


def _policy_weights(grid: Grid, cells: list[Cell], cells_dir: str) -> dict[float, list[dict]]:
    """``{ratio: [screen record]}`` of the RL Panning cells that screened with a policy
    (their ``screen.json``, written also when the mask then cut the network)."""
    out: dict[float, list[dict]] = {}
    for cell in cells:
        path = os.path.join(cells_dir, cell.dirname, "screen.json")
        if cell.method != "rlpanning" or not os.path.isfile(path):
            continue
        with open(path) as f:
            rl = json.load(f).get("rl") or {}
        if (rl.get("screen") or {}).get("weights"):
            out.setdefault(cell.ratio, []).append(rl)
    return out


def plot_fusion_weights(grid: Grid, screened: dict[float, list[dict]], path: str) -> None:
    """The fusion weights (SynFlow, SNIP, GraSP) RL Panning's policy picked in each round,
    mean over seeds (solid; band: min to max), beside hand Panning's staircase (dashed), one
    panel per ratio."""
    from benchmarks.policy_eval import staircase_actions

    plt = report.pyplot()
    ratios = [r for r in grid.ratios if r in screened]
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.4 * len(ratios), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    colors = ("tab:blue", "tab:orange", "tab:green")
    for ax, ratio in zip(axes, ratios):
        runs = screened[ratio]
        rounds = min(len(rl["screen"]["weights"]) for rl in runs)
        w = np.asarray([rl["screen"]["weights"][:rounds] for rl in runs])  # [seeds, T, 3]
        hand = (staircase_actions(ratio, rounds, runs[0]["env"]["fusion"]) + 1.0) / 2.0
        x = np.arange(1, rounds + 1)
        for i, metric in enumerate(("synflow", "snip", "grasp")):
            ax.plot(x, w[:, :, i].mean(0), color=colors[i], label=f"{metric} (policy)")
            ax.fill_between(x, w[:, :, i].min(0), w[:, :, i].max(0), color=colors[i], alpha=0.15)
            ax.plot(x, hand[:, i], "--", color=colors[i], label=f"{metric} (hand)")
        ax.set_title(f"sparsity {ratio:g} ({len(runs)} seeds)", fontsize=9)
        ax.set_xlabel("round")
    axes[0].set_ylabel("fusion weight")
    axes[-1].legend(fontsize=6, loc="best")
    policy = os.path.basename(screened[ratios[0]][0].get("policy_loaded_from") or "searched")
    fig.suptitle(f"{grid.model}: RL Panning's fusion weights ({policy}) vs the hand staircase")
    fig.tight_layout()
    report.save_png(fig, path)


def plot_purl_alphas(grid: Grid, cells: list[Cell], cells_dir: str, path: str) -> None:
    """PuRL's α per layer, mean ± std over seeds, one line per ratio."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = None
    for ratio in grid.ratios:
        alphas = []
        for cell in cells:
            if cell.ratio == ratio:
                with open(os.path.join(cells_dir, cell.dirname, "results.json")) as f:
                    r = json.load(f)["purl"]
                layers, alphas = r["layers"], alphas + [r["alphas"]]
        if alphas:
            a = np.asarray(alphas)
            ax.errorbar(
                np.arange(a.shape[1]),
                a.mean(0),
                yerr=a.std(0),
                marker="o",
                ms=3,
                capsize=2,
                label=f"target {ratio:g} ({len(a)} seeds)",
            )
    if layers:
        ax.set_xticks(
            range(len(layers)), [n.removesuffix("/kernel") for n in layers], rotation=75, fontsize=7
        )
    ax.set_ylabel("α (prune |w| < α·std of the layer)")
    ax.set_title(f"PuRL: α per layer, {grid.model} / {grid.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.save_png(fig, path)


def update_readme(path: str, name: str, table: str, out: str) -> None:
    """Replace the README text between this grid's markers with the table (links fixed)."""
    start, end = f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise JPanningError(f"--readme {path!r} has no markers {start} ... {end}")
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(path)))
    table = re.sub(r"\]\(([\w.]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", table)
    if COSTS in table:  # the README keeps accuracy and verdicts; costs stay in table.md
        accuracy, rest_of_table = table.split(COSTS, 1)
        images = rest_of_table[rest_of_table.index("\n![") :]
        table = (
            f"{accuracy}Sparsity, effective sparsity, FLOPs left, screening and training seconds "
            f"of every cell: [{rel}/table.md]({rel}/table.md), [{rel}/runs.csv]({rel}/runs.csv).\n"
            f"{images}"
        )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    report.atomic_write_bytes(path, f"{head}{start}\n{table}{end}{tail}".encode())


def build_parser() -> argparse.ArgumentParser:
    a_ratio = cli.argument_type(config_lib.ratio)
    positive_int = cli.argument_type(config_lib.positive(int))
    p = cli.Parser(
        prog="python -m benchmarks.compare",
        description="Every method at every sparsity against dense training, over seeds.",
    )
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="a grid of presets.py")
    p.add_argument("--name", default=None, help="results folder name (default: the preset's)")
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--ratios", type=a_ratio, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", type=positive_int, default=None)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--train-limit", type=positive_int, default=None)
    p.add_argument("--test-limit", type=positive_int, default=None)
    p.add_argument(
        "--run-args",
        default=None,
        help="further run.py arguments for every cell, one quoted string "
        '(e.g. "--preset quick --rounds 20")',
    )
    p.add_argument("--density-ratio", type=a_ratio, default=None)
    p.add_argument("--data-dir", default=None, help="tfds data directory")
    p.add_argument(
        "--data-file",
        default=None,
        help="the dataset's raw splits as one .npz (python -m benchmarks.device_search pack), "
        "for a machine without tensorflow-datasets",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="run only share K (0 to N-1) of the cells, for N workers side by side; "
        "writes no report (run --report-only when all are done)",
    )
    p.add_argument("--out-root", default=RESULTS, help="where <name>/ goes")
    p.add_argument("--report-only", action="store_true", help="tables and plots, run nothing")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--readme", default=None, help="copy the table into this file's markers")
    p.add_argument("--list", action="store_true", help="list the presets and the cells")
    return p


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 0 <= K < N (e.g. 0/4)")
    return int(k), int(n)


def grid_from_args(args: argparse.Namespace) -> tuple[str, Grid]:
    """The preset with the given flags laid over it; a clear error for what is missing."""
    from jpanning.models import MODELS

    base = PRESETS[args.preset] if args.preset else None
    fields = {
        "model": args.model,
        "dataset": args.dataset,
        "ratios": tuple(args.ratios) if args.ratios else None,
        "methods": tuple(args.methods) if args.methods else None,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "run_args": tuple(shlex.split(args.run_args)) if args.run_args is not None else None,
        "density_ratio": args.density_ratio,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    if base is None:
        missing = [f"--{k}" for k in ("model", "dataset", "ratios") if k not in given]
        if missing:
            raise JPanningError(f"give --preset or {', '.join(missing)}")
        if args.name is None:
            raise JPanningError("a grid without --preset needs --name (its results folder)")
        grid = Grid(**given)
    else:
        grid = dataclasses.replace(base, **given)
    if grid.model not in MODELS:
        raise JPanningError(f"unknown model {grid.model!r}; choose from {', '.join(MODELS)}")
    unknown = [m for m in grid.methods if m not in METHODS]
    if unknown:
        raise JPanningError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    for flag in ("--out", "--policy", "--seed", "--method", "--ratio", "--model", "--dataset"):
        if flag in grid.run_args:
            raise JPanningError(f"--run-args may not set {flag}: the harness sets it per cell")
    return args.name or args.preset, grid


def _grid_argv(argv: list[str]) -> list[str]:
    """The arguments that define the grid: without ``--report-only``, ``--readme PATH`` and
    ``--retry-failed``, which change what is written, not the results."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--readme":
            skip = True
        elif arg not in ("--report-only", "--retry-failed") and not arg.startswith("--readme="):
            out.append(arg)
    for i, arg in enumerate(out[:-1]):  # a results root inside the repository, as from its root
        if arg == "--out-root" and os.path.isabs(out[i + 1]):
            rel = os.path.relpath(out[i + 1], os.path.dirname(os.path.dirname(RESULTS)))
            out[i + 1] = out[i + 1] if rel.startswith("..") else rel
    return out


def marker_name(out: str, name: str) -> str:
    """The README markers' name of a results folder: its path under benchmarks/results
    (``screening-resnet20``, ``cpu/screening-resnet20``), else the grid's name."""
    rel = os.path.relpath(os.path.abspath(out), RESULTS)
    return name if rel.startswith("..") else rel.replace(os.sep, "/")


def main(argv: list[str] | None = None) -> int:
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    args = build_parser().parse_args(argv)
    if args.list:
        width = max(map(len, PRESETS))
        for name, grid in PRESETS.items():
            print(f"{name:{width}s} {len(cells_of(grid)):4d} cells  {grid.about}")
        if not args.preset and not args.model:
            return 0
    try:
        name, grid = grid_from_args(args)
        out = os.path.join(args.out_root, name)
        cells_dir = os.path.join(out, "cells")
        cells = cells_of(grid)
        command = "python -m benchmarks.compare " + shlex.join(
            _grid_argv(sys.argv[1:] if argv is None else argv)
        )
        todo = [
            c
            for c in cells
            if cell_status(c, cells_dir) is None
            or (args.retry_failed and cell_status(c, cells_dir) == "failed")
        ]
        print(f"{name}: {len(cells)} cells, {len(cells) - len(todo)} already done -> {out}")
        if args.shard:  # dealt over all the cells, so that workers started apart agree
            mine = {c.dirname for c in shard(cells, *args.shard)}
            todo = [c for c in todo if c.dirname in mine]
            print(f"share {args.shard[0]}/{args.shard[1]}: {len(todo)} of them to run")
        if args.list:
            for c in cells:
                print(f"  {c.dirname:48s} {cell_status(c, cells_dir) or 'to run'}")
            return 0
        if not args.report_only and todo:
            os.makedirs(cells_dir, exist_ok=True)
            cli.enable_compilation_cache()  # the process's, as run.py sets it
            data_cache, start = _DataCache(args.data_file), time.perf_counter()
            for i, cell in enumerate(todo):
                t0 = time.perf_counter()
                status = run_cell(cell, cells_dir, data_cache, args.data_dir)
                row = load_row(cell, cells_dir)
                elapsed = time.perf_counter() - start
                eta = datetime.timedelta(seconds=round(elapsed / (i + 1) * (len(todo) - i - 1)))
                what = {
                    "ok": lambda: f"acc {row['test_accuracy']:.4f}",
                    "chance": lambda: f"disconnected, at chance {row['test_accuracy']:.4f}",
                }.get(row["status"], lambda: f"failed: {row['error']}")()
                print(
                    f"[{i + 1}/{len(todo)}] {cell.dirname}: {what} "
                    f"({time.perf_counter() - t0:.1f} s; eta {eta})",
                    flush=True,
                )
        if args.shard:
            print(f"share {args.shard[0]}/{args.shard[1]} done; --report-only writes the report")
            return 0
        table = write_report(name, grid, cells, out, command)
        if args.readme:
            update_readme(args.readme, marker_name(out, name), table, out)
        print(table)
    except Interrupted as e:
        print(
            f"benchmarks.compare: {e}; finished cells are kept, run the same command to "
            "continue (the stopped cell resumes)",
            file=sys.stderr,
        )
        return e.exit_code
    except JPanningError as e:
        print(f"benchmarks.compare: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "benchmarks.compare: interrupted; finished cells are kept, run the same command "
            "to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
