"""Result files: what the benchmarks write through jpanning.report."""

import json
import os

import numpy as np

from jpanning import report


def test_write_result_writes_json_and_markdown_atomically(tmp_path, capsys):
    out = tmp_path / "new" / "dir"  # created on demand
    result = {"benchmark": "x", "median": [0.5, 1.25]}
    report.write_result(str(out), "x_cpu", result, ["# X", "", "| a | 1 |"])
    assert sorted(os.listdir(out)) == ["x_cpu.json", "x_cpu.md"]  # no temporary files left
    assert json.loads((out / "x_cpu.json").read_text()) == result
    assert (out / "x_cpu.md").read_text() == "# X\n\n| a | 1 |\n"
    assert capsys.readouterr().out == "# X\n\n| a | 1 |\n"
    report.write_result(str(out), "x_cpu", {"benchmark": "y"}, ["# Y"])  # replaces both
    assert json.loads((out / "x_cpu.json").read_text()) == {"benchmark": "y"}
    assert (out / "x_cpu.md").read_text() == "# Y\n"


def test_machine_line_names_device_versions_and_date():
    env = {
        "machine": {"cpu": "AMD EPYC", "cores": 2},
        "device": {"platform": "gpu", "kind": "NVIDIA H100 80GB HBM3"},
        "versions": {"jax": "0.11.2", "flax": "0.12.10"},
        "date": "2026-11-26T12:00:00+00:00",
    }
    assert report.machine_line(env) == (
        "Machine: AMD EPYC, 2 cores; device NVIDIA H100 80GB HBM3 (gpu); jax 0.11.2; "
        "2026-11-26T12:00:00+00:00"
    )
    assert report.machine_line(env, ("jax", "flax"), "torch 2.11 on the GPU") == (
        "Machine: AMD EPYC, 2 cores; device NVIDIA H100 80GB HBM3 (gpu); jax 0.11.2, flax "
        "0.12.10; torch 2.11 on the GPU; 2026-11-26T12:00:00+00:00"
    )


def test_a_rare_outlier_episode_is_cut_from_the_learning_curves_axis():
    from jpanning.report import _outliers_below

    returns = np.concatenate([np.linspace(-20.0, -8.0, 399), [-175.0]])
    low, count = _outliers_below(returns)
    q1, q3 = np.percentile(returns, [25, 75])
    assert count == 1 and -175.0 < low < q1 - 3 * (q3 - q1)
    assert _outliers_below(returns[:-1]) is None  # nothing far below: the whole range
    assert _outliers_below(np.concatenate([returns, [-150.0] * 10])) is None  # not rare: shown
