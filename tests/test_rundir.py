"""A run's folder: how it ended, what an interrupted run left, stage records tied to the run."""

import contextlib
import json

import pytest

from jpanning.errors import JPanningError
from jpanning.rundir import RunDir, run_id_of


def _write(folder, name, record):
    (folder / name).write_text(json.dumps(record))


def test_a_run_ends_only_with_a_record_of_its_own_id(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.run_id is None and run.ended() is None and run.interrupted() is None
    _write(tmp_path, "run.json", {"ratio": 0.9, "run_id": "b"})
    assert run.run_id == "b" and run.ended() is None
    _write(tmp_path, "results.json", {"config": {"run_id": "a"}})  # an older run's
    assert run.ended() is None
    _write(tmp_path, "failed.json", {"error": "x", "run_id": "b"})
    assert run.ended() == "failed"
    _write(tmp_path, "results.json", {"config": {"run_id": "b"}})
    assert run.ended() == "finished"
    assert run_id_of([1]) is None and run_id_of({"config": {"run_id": "c"}}) == "c"


def test_an_interrupted_run_says_what_it_left_and_a_new_run_is_refused_there(tmp_path):
    run = RunDir(str(tmp_path))
    _write(tmp_path, "run.json", {"run_id": "b"})
    assert run.interrupted() is None  # settings alone: nothing to resume
    (tmp_path / "masks.npz").write_bytes(b"")
    _write(tmp_path, "screen.json", {"run_id": "b"})
    (tmp_path / "checkpoints" / "train").mkdir(parents=True)
    assert run.interrupted() == "masks.npz, screen.json, checkpoints/"
    with contextlib.ExitStack() as owned:
        with pytest.raises(JPanningError, match="holds an interrupted run .*--resume"):
            run.own(owned, resume=False, overwrite=False)
    with contextlib.ExitStack() as owned:
        run.own(owned, resume=True, overwrite=False)  # resuming it is what it is for
        with contextlib.ExitStack() as other:  # one live run per folder
            with pytest.raises(JPanningError):
                RunDir(str(tmp_path)).own(other, resume=True, overwrite=False)


def test_overwrite_removes_the_finished_runs_results_and_checkpoints(tmp_path):
    run = RunDir(str(tmp_path))
    _write(tmp_path, "run.json", {"run_id": "b"})
    _write(tmp_path, "results.json", {"config": {"run_id": "b"}})
    (tmp_path / "checkpoints").mkdir()
    with contextlib.ExitStack() as owned:
        with pytest.raises(JPanningError, match="holds a finished run"):
            run.own(owned, resume=False, overwrite=False)
    with contextlib.ExitStack() as owned:
        run.own(owned, resume=False, overwrite=True)
    assert not run.has("results.json") and not (tmp_path / "checkpoints").exists()
    assert run.has("run.json")  # the rest is replaced as the new run writes it


def test_stage_records_belong_to_one_run(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_record("screen.json", {"prune_seconds": 1.5}, "b")
    assert json.loads((tmp_path / "screen.json").read_text()) == {
        "prune_seconds": 1.5,
        "run_id": "b",
    }
    assert run.stage_record("screen.json", "b") == {"prune_seconds": 1.5}
    assert run.stage_record("screen.json", "a") is None  # another run's: the stage reruns
    (tmp_path / "pretrained.json").write_text("{not json")
    assert run.stage_record("pretrained.json", "b") is None
    assert run.stage_record("missing.json", "b") is None


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(JPanningError, match="is not writable"):
        RunDir(str(tmp_path / "file" / "out")).check_writable()
