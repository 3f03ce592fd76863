"""A run from Python: a RunConfig through jpanning.experiment, no command line."""

import json
import os

import numpy as np
import pytest

from jpanning import checkpoint, experiment, report
from jpanning.config import RunConfig
from jpanning.errors import JPanningError


def _tiny(out, **settings):
    return RunConfig.from_flat(
        {"model": "tinycnn", "dataset": "synthetic", "method": "snip", "ratio": 0.8}
        | {"epochs": 1, "batch_size": 50, "train_limit": 300, "test_limit": 100}
        | {"out": str(out), "no_progress": True}
        | settings
    )


def test_a_run_config_runs_screens_trains_and_writes_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JPANNING_COMPILATION_CACHE", "off")
    config = _tiny(tmp_path / "run")
    results = experiment.run(config)
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["config"]["method"] == "snip" and results["config"]["ratio"] == 0.8
    saved = json.loads((out / "run.json").read_text())
    # run.json: the config and its run_id; SNIP's own options only (no preset, no scoring)
    settled = config.replace(run_id=saved["run_id"])
    assert "chunk_size" in saved and not {"preset", "scoring", "rounds"} & set(saved)
    assert RunConfig.from_flat(saved | {"out": str(out), "no_progress": True}) == settled
    assert results["config"]["run_id"] == saved["run_id"]
    total = results["sparsity"]["total"]
    assert results["sparsity"]["kept"] == total - round(0.8 * total)
    masks = report.load_npz(str(out / "masks.npz"))["masks"]
    model = report.load_npz(str(out / "model.npz"))
    for name, m in report.flatten_tree(masks).items():
        np.testing.assert_array_equal(m, report.flatten_tree(model["masks"])[name])
    assert not (out / "checkpoints").exists() and not experiment.interrupted_run(str(out))
    # the folder is owned: a second run into it is refused unless it overwrites
    with pytest.raises(JPanningError, match="holds a finished run"):
        experiment.run(config)
    with pytest.raises(JPanningError, match="that run has finished"):
        experiment.resume(str(out))
    with pytest.raises(JPanningError, match="lr cannot change them"):
        experiment.resume(str(out), lr=0.5)
    again = experiment.run(config.replace(overwrite=True))
    assert again["config"]["run_id"] != results["config"]["run_id"]
    assert again["sparsity"] == results["sparsity"]  # same seed, same mask


def test_a_run_stopped_after_screening_resumes_from_its_masks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JPANNING_COMPILATION_CACHE", "off")
    out = tmp_path / "stopped"
    calls = []

    def stop_once(*args, **kwargs):  # a signal arrives as screening ends
        calls.append(args)
        raise checkpoint.Interrupted("stopped by SIGTERM after screening", "SIGTERM")

    monkeypatch.setattr(experiment, "_check_stop", stop_once)
    with pytest.raises(checkpoint.Interrupted):
        experiment.run(_tiny(out))
    assert experiment.interrupted_run(str(out)) == "masks.npz, screen.json"
    monkeypatch.undo()
    monkeypatch.setenv("JPANNING_COMPILATION_CACHE", "off")
    capsys.readouterr()
    results = experiment.resume(str(out), no_progress=True)
    assert "screening: the masks in" in capsys.readouterr().out
    assert results["config"]["resume"] == str(out) and os.path.isfile(out / "results.json")
