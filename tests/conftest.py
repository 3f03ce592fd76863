"""Fixtures shared by the test modules."""

import jax
import pytest

from jpanning import cpu, data, masks as M, models, pruning


def pytest_configure(config):
    """The CPU tuning run.py has (``XLA_FLAGS`` and the allocator; importing jpanning sets
    neither), before collection imports the test modules and anything starts JAX's backends:
    tests/test_cpu.py checks programs compiled under it."""
    cpu.configure()


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
