"""run.py end to end on tiny settings, and one clear line for each bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jpanning import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=600):
    env = dict(os.environ, JPANNING_DATA_DIR=os.environ.get("JPANNING_DATA_DIR", "/nonexistent"))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_smoke_run_writes_exact_sparsity_and_zeroed_params(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "--model",
        "tinycnn",
        "--dataset",
        "synthetic",
        "--method",
        "magnitude",
        "--ratio",
        "0.9",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    total = results["sparsity"]["total"]
    assert results["sparsity"]["kept"] == total - round(0.9 * total)
    assert results["test_accuracy"] > 0.5  # synthetic data is learnable; chance is far lower
    assert results["nonzero_after_training"]["kept"] <= results["sparsity"]["kept"]
    for key in ("versions", "device", "machine", "config", "prune_seconds", "train_seconds"):
        assert key in results
    assert results["config"]["method"] == "magnitude"
    saved = report.load_npz(str(out / "model.npz"))
    flat_m = report.flatten_tree(saved["masks"])
    flat_p = report.flatten_tree(saved["params"])
    assert set(flat_m) == set(flat_p)
    for name, m in flat_m.items():
        assert np.all(flat_p[name][m == 0] == 0.0), name
    assert (out / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in proc.stdout
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert "effective sparsity" in proc.stdout
    assert results["sparsity"]["sparsity"] <= results["effective_sparsity"] <= 1.0
    assert results["collapsed_layers"] == []


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "iter_snip", "force", "panning"])
def test_every_scoring_method_runs_end_to_end(tmp_path, method):
    out = tmp_path / method
    proc = run_cli(
        *("--model", "tinycnn", "--dataset", "synthetic", "--method", method),
        *("--ratio", "0.8", "--rounds", "3", "--epochs", "1", "--batch-size", "50"),
        *("--train-limit", "300", "--test-limit", "100", "--out", str(out), "--no-progress"),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    total = results["sparsity"]["total"]
    assert results["sparsity"]["kept"] == total - round(0.8 * total)
    assert results["config"]["method"] == method and results["config"]["rounds"] == 3
    saved = report.load_npz(str(out / "model.npz"))
    flat_m, flat_p = report.flatten_tree(saved["masks"]), report.flatten_tree(saved["params"])
    for name, m in flat_m.items():
        assert np.all(flat_p[name][m == 0] == 0.0), name


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "resnet7"], "invalid choice: 'resnet7'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--method", "lottery"], "invalid choice: 'lottery'"),
        (["--ratio", "0"], "0.0 is outside (0, 1)"),
        (["--ratio", "1.5"], "1.5 is outside (0, 1)"),
        (["--ratio", "half"], "'half' is not a number"),
        (["--epochs", "0"], "0 must be positive"),
        (["--data-dir", "/no/such/dir"], "--data-dir '/no/such/dir' does not exist"),
        (["--out", "/proc/version/out"], "--out '/proc/version/out' is not writable"),
        (["--panning-weights", "1,2"], "'1,2' is not three non-negative numbers"),
        (
            ["--method", "panning", "--panning-weights", "1,0,0", "--rounds", "2"],
            "panning needs 5 rows of weights for 4 thresholds, got 1",
        ),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message):
    proc = run_cli("--dataset", "synthetic", "--model", "tinycnn", "--epochs", "1", *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
