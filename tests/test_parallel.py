"""Data parallelism: 4 simulated CPU devices give the single-device masks and losses.

The 4-device checks run tests/multidevice_check.py once in a subprocess (JAX fixes its device
count at start-up) and are marked slow; the CPU devices are simulated with
``--xla_force_host_platform_device_count``."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import parallel
from jpanning.errors import JPanningError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def four_devices():
    """The JSON printed by tests/multidevice_check.py run on 4 simulated CPU devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=ROOT)
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "multidevice_check.py")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # one 4-device subprocess for all four (~40 s)
def test_scoring_batch_split_over_four_devices_gives_the_same_masks(four_devices):
    assert four_devices["snip_same_mask"]
    assert four_devices["grasp_same_mask"]
    assert four_devices["panning_same_mask"]


@pytest.mark.slow  # one 4-device subprocess for all four (~40 s)
def test_training_split_over_four_devices_matches_one_device(four_devices):
    assert four_devices["state_devices"] == 4
    assert four_devices["pruned_stay_zero"]
    assert four_devices["max_param_diff"] < 1e-4
    assert len(four_devices["history_1"]) == len(four_devices["history_4"]) == 2
    for a, b in zip(four_devices["history_1"], four_devices["history_4"]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow  # one 4-device subprocess for all four (~40 s)
def test_run_py_with_four_devices_matches_one_device(four_devices):
    assert four_devices["cli_split_message"]
    assert four_devices["cli_same_masks"]
    assert len(four_devices["cli_history_1"]) == len(four_devices["cli_history_4"]) == 1
    for a, b in zip(four_devices["cli_history_1"], four_devices["cli_history_4"]):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow  # one 4-device subprocess for all four (~40 s)
def test_environments_split_over_four_devices_match_one_device(four_devices):
    assert four_devices["env_devices"] == 4
    assert four_devices["env_same_masks"]
    assert four_devices["env_max_diff"] < 1e-4


def test_bad_device_counts_and_batch_sizes_are_one_line_errors():
    n = jax.device_count()
    with pytest.raises(JPanningError, match=rf"--devices {n + 1}: this run has {n} device"):
        parallel.make_mesh(n + 1)
    mesh = parallel.make_mesh(1)
    parallel.check_divisible(7, mesh, "--batch-size")  # one device: anything goes
    with pytest.raises(JPanningError, match="--batch-size 30 is not divisible by the 4 devices"):
        parallel.check_divisible(30, type("M", (), {"size": 4})(), "--batch-size")


def test_one_device_mesh_leaves_values_unchanged():
    mesh = parallel.make_mesh(1)
    x = np.arange(12.0).reshape(6, 2)
    placed = parallel.put_batch(mesh, {"x": x})["x"]
    np.testing.assert_array_equal(np.asarray(placed), x)
    f = parallel.vmap_over_devices(lambda a, b: a * b, mesh, (0, None))
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x), 2.0)), 2 * x)
    with pytest.raises(JPanningError, match="maps axis 0 or nothing"):
        parallel.vmap_over_devices(lambda a: a, mesh, (1,))
