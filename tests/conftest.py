"""Fixtures shared by the test modules."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

from jpanning import cpu, data, masks as M, models, pruning

_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    """The CPU tuning run.py has (``XLA_FLAGS`` and the allocator; importing jpanning sets
    neither), before collection imports the test modules and anything starts JAX's backends:
    tests/test_cpu.py checks programs compiled under it.

    And one persistent compilation cache for the session, empty at its start, shared with
    the ``run.py`` subprocesses of the CLI tests (through the environment): the tests compile
    the same programs many times over (new jitted closures, new processes), and XLA's
    compile time is a large part of the suite's (tests/test_panning.py: 224 s without the
    cache, 141 s with it; two tests alone that reuse nothing: 66 s, 73 s with its writes).
    JAX keys its entries by the program, the compile options and ``XLA_FLAGS``."""
    cpu.configure()
    cache = tempfile.mkdtemp(prefix="jpanning-tests-xla-cache-")
    config.stash[_CACHE] = cache
    settings = {
        "jax_compilation_cache_dir": cache,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


def pytest_unconfigure(config):
    shutil.rmtree(config.stash.get(_CACHE, ""), ignore_errors=True)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run.py's main over many argument lists in one process: what each returned (or exited with)
# and what it wrote to stderr. An uncaught exception ends the process (the fixture fails).
_CLI_DRIVER = """
import contextlib, io, json, sys
from jpanning import cli
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def run_cli_many():
    """``run_cli_many(argvs) -> {tuple(argv): (exit code, stderr)}``: ``run.py``'s ``main`` for each argument
    list, in one Python process (one import of JAX for all, not one each), with no data
    folder (``JPANNING_DATA_DIR`` unset to a missing path unless the environment sets it)."""

    def run(argvs, timeout=600):
        env = dict(
            os.environ, JPANNING_DATA_DIR=os.environ.get("JPANNING_DATA_DIR", "/nonexistent")
        )
        proc = subprocess.run(
            [sys.executable, "-c", _CLI_DRIVER, json.dumps(argvs)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs = json.loads(proc.stdout.strip().splitlines()[-1])
        return {tuple(argv): tuple(run) for argv, run in zip(argvs, runs)}

    return run


@pytest.fixture
def xla_convolution():
    """XLA's CPU convolutions (``cpu.set_convolution("xla")``) for the test, whatever the
    process default; the previous choice back afterwards."""
    previous = cpu.set_convolution("xla")
    yield
    cpu.set_convolution(previous)


def _tiny_problem(sparsity: float, options=None):
    """A PruneProblem on tinycnn and the synthetic data (scoring batch: 4 per class, seed 0).

    Returns:
        ``(problem, dataset)``.
    """
    dataset = data.load_dataset("synthetic", seed=0)
    model = models.create_model("tinycnn", dataset.num_classes)
    variables = models.init_variables(model, jax.random.key(0), dataset.input_shape)
    problem = pruning.PruneProblem(
        model=model,
        variables=variables,
        batch=data.scoring_batch(dataset, 4, seed=0),
        sparsity=sparsity,
        prunable=M.prunable_tree(variables["params"]),
        key=jax.random.key(1),
        options=options or {},
    )
    return problem, dataset


@pytest.fixture(scope="session")
def make_tiny_problem():
    """``make_tiny_problem(sparsity, options=None) -> (PruneProblem, dataset)`` on tinycnn."""
    return _tiny_problem
