"""run.py end to end on tiny settings, and one clear line for each bad input."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from jpanning import masks as M, report
from jpanning.config import option_fields

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


# snip (one shot) and panning (rounds fusing SNIP, GraSP and SynFlow) in the default suite; the
# other methods in the slow one (the default suite's 10-minute budget).
@pytest.mark.parametrize(
    "method",
    [
        "snip",
        "panning",
        *(
            pytest.param(m, marks=pytest.mark.slow)
            for m in ("grasp", "synflow", "iter_snip", "force")
        ),
    ],
)
def test_every_scoring_method_runs_end_to_end(tmp_path, method, capsys):
    from jpanning import cli  # in-process: the subprocess smoke test above covers run.py itself

    out = tmp_path / method
    rc = cli.main(
        [
            *("--model", "tinycnn", "--dataset", "synthetic", "--method", method),
            *("--ratio", "0.8", "--epochs", "1", "--batch-size", "50"),
            *("--train-limit", "300", "--test-limit", "100", "--out", str(out), "--no-progress"),
            *(("--rounds", "3") if "rounds" in option_fields(method) else ()),  # not snip, grasp
        ]
    )
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    total = results["sparsity"]["total"]
    rounding = "floor" if method == "panning" else "nearest"  # the Panning authors' int()
    assert results["sparsity"]["kept"] == int(M.num_to_keep(total, 0.8, rounding))
    assert results["config"]["method"] == method
    assert results["config"].get("rounds") == (3 if "rounds" in option_fields(method) else None)
    saved = report.load_npz(str(out / "model.npz"))
    flat_m, flat_p = report.flatten_tree(saved["masks"]), report.flatten_tree(saved["params"])
    for name, m in flat_m.items():
        assert np.all(flat_p[name][m == 0] == 0.0), name


BAD_INPUTS = [
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
]
BASE = ["--dataset", "synthetic", "--model", "tinycnn", "--epochs", "1"]


@pytest.fixture(scope="module")
def bad_input_runs(run_cli_many):
    """Every case of :data:`BAD_INPUTS` through run.py's main, in one process."""
    return run_cli_many([BASE + args for args, _ in BAD_INPUTS])


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, bad_input_runs):
    code, stderr = bad_input_runs[tuple(BASE + args)]
    assert code not in (0, None)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert message in lines[0]


def test_a_bad_input_exits_nonzero_from_the_real_entry_point():
    """One case through ``python run.py`` itself: the exit status and the one line."""
    proc = run_cli(*BASE, "--ratio", "1.5")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "run.py: error: argument --ratio: 1.5 is outside (0, 1): "
        "it is the fraction of prunable weights removed"
    ]


TINY = ["--dataset", "synthetic", "--model", "tinycnn", "--method", "snip", "--ratio", "0.8"]


def _files(folder) -> dict:
    return {
        name: (folder / name).read_bytes()
        for name in sorted(os.listdir(folder))
        if (folder / name).is_file()
    }


@pytest.mark.slow  # three runs in subprocesses (~50 s); tests/test_train.py resumes in-process
def test_sigterm_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    import signal
    import time

    argv = [*TINY, "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "10"]
    want = run_cli(*argv, "--out", str(tmp_path / "whole"), "--no-progress")
    assert want.returncode == 0, want.stderr
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "run.py"), *argv, "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "train" / "10").is_dir():  # training has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    step = int(re.search(r"stopped by SIGTERM at step (\d+); checkpoint at step \1", stderr)[1])
    assert 10 <= step < 3 * 62
    assert not (out / "results.json").exists()
    # A fresh run into that folder would throw the stopped one away: refused.
    again = run_cli(*argv, "--out", str(out))
    assert again.returncode == 1 and "holds an interrupted run" in again.stderr
    resumed = run_cli("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint at step {step}" in resumed.stdout
    got, ref = report.load_npz(out / "model.npz"), report.load_npz(tmp_path / "whole" / "model.npz")
    for tree in ("masks", "params", "batch_stats"):
        a, b = report.flatten_tree(got[tree]), report.flatten_tree(ref[tree])
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{tree}/{name}")
    results = [json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "whole")]
    assert results[0]["history"] == results[1]["history"]
    assert not (out / "checkpoints").exists()  # removed once results.json is written


def test_a_live_run_owns_its_folder(tmp_path, capsys):
    """A second run into the folder of a live one refuses in one line, naming it; the lock
    goes with the process, however it ends (here SIGKILL)."""
    import signal
    import time

    from jpanning import checkpoint, cli

    out = tmp_path / "live"
    first = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "run.py"), *TINY, "--epochs", "100", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, JPANNING_DATA_DIR="/nonexistent"),
    )  # fmt: skip
    try:
        lock, deadline = out / checkpoint.LOCK_FILE, time.monotonic() + 300
        while not (lock.is_file() and lock.read_text().strip()):  # the pid: the lock is held
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        capsys.readouterr()
        rc = cli.main([*TINY, "--epochs", "1", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, err
        assert f"--out {str(out)!r} is in use by a live run (process {first.pid}, " in err[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    with checkpoint.owned(str(out)):  # released by the kill
        pass


def test_bad_inputs_give_one_line_a_nonzero_exit_and_lose_nothing(tmp_path, capsys, monkeypatch):
    from jpanning import cli
    from jpanning.data.builders import JpanningMnist

    def main(*argv, lines=False):
        capsys.readouterr()
        rc = cli.main([*argv, "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        return rc, err if lines else err[-1] if err else ""

    done = tmp_path / "done"  # a finished run whose files must survive what follows
    assert main(*TINY, "--epochs", "1", "--out", str(done))[0] == 0
    kept = _files(done)
    rc, err = main("--resume", str(done))
    assert rc == 1 and "that run has finished" in err
    nan = ("--lr", "1e30", "--checkpoint-every", "1", "--epochs", "1")

    # a finished run's folder is refused, and nothing in it is touched, unless --overwrite
    rc, err = main(*TINY, *nan, "--out", str(done), lines=True)
    assert rc == 1 and len(err) == 1 and _files(done) == kept
    assert f"--out {str(done)!r} holds a finished run (results.json); replace it with" in err[0]
    diverged = (
        r"training diverged: (loss is (nan|inf) at step|the params are not finite after step) "
        r"\d+; .*the last good checkpoint \(step \d+\) is kept in .*checkpoints/train$"
    )
    rc, err = main("--resume", str(done), "--lr", "0.01")
    assert rc == 1 and "--lr cannot change them (only --allow-collapsed, --devices" in err

    stopped = tmp_path / "stopped"  # a run that crashed: masks and a checkpoint, no end
    rc, err = main(*TINY, *nan, "--out", str(stopped))
    assert rc == 1 and re.search(diverged, err), err
    assert json.loads((stopped / "failed.json").read_text())["error"] in err
    (stopped / "failed.json").unlink()
    rc, err = main(*TINY, "--epochs", "1", "--out", str(stopped))
    assert rc == 1 and "holds an interrupted run (masks.npz, screen.json, checkpoints/)" in err
    # Damaged array data under intact metadata: orbax's background reads print hundreds of
    # lines of tracebacks while failing; run.py prints one line (all of it with --verbose).
    for f in (stopped / "checkpoints" / "train").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"\0garbage")
    proc = run_cli("--resume", str(stopped), "--no-progress")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "no readable checkpoint in" in proc.stderr and "delete the directory" in proc.stderr
    rc, err = main("--resume", str(stopped), "--verbose", lines=True)
    assert rc == 1 and "no readable checkpoint in" in err[-1] and "delete the directory" in err[-1]
    assert len(err) > 1 and "Traceback (most recent call last):" in err
    for f in (stopped / "checkpoints" / "train").rglob("*"):
        if f.is_file() and f.name != "_CHECKPOINT_METADATA":
            f.write_bytes(b"\0garbage")
    rc, err = main("--resume", str(stopped), lines=True)
    assert rc == 1 and len(err) == 1 and "no readable checkpoint in" in err[0]
    (stopped / "masks.npz").write_bytes(b"PK\3\4 not a zip")
    rc, err = main("--resume", str(stopped))
    assert rc == 1 and "the saved screening (masks.npz, screen.json) is not readable" in err
    (stopped / "run.json").write_text("{")
    rc, err = main("--resume", str(stopped))
    assert rc == 1 and "run.json is not readable" in err
    rc, err = main("--resume", str(tmp_path / "nothing"))
    assert rc == 1 and "is not a directory" in err

    # Missing data, named with the reason: MNIST's download host does not answer.
    monkeypatch.setattr(JpanningMnist, "URLS", {k: f"http://127.0.0.1:9/{k}" for k in "ab"})
    monkeypatch.setattr(JpanningMnist, "url_infos", {f"http://127.0.0.1:9/{k}": None for k in "ab"})
    rc, err = main("--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m"))
    assert rc == 1 and err.startswith("run.py: error: cannot prepare mnist in")
    assert "download host 127.0.0.1:9 is unreachable" in err
    rc, err = main(*TINY, "--devices", "64", "--out", str(tmp_path / "d"))
    assert rc == 1 and "--devices 64: this run has" in err
    assert _files(done) == kept

    # --overwrite: a new run takes the finished run's folder
    assert main(*TINY, "--epochs", "1", "--out", str(done), "--overwrite")[0] == 0
    run_ids = [json.loads(kept["results.json"]), json.loads((done / "results.json").read_text())]
    assert run_ids[0]["config"]["run_id"] != run_ids[1]["config"]["run_id"]


def test_a_disconnected_mask_is_refused_and_resume_allow_collapsed_trains_it(
    tmp_path, capsys, monkeypatch
):
    import jax

    from jpanning import cli, scores

    # Pretend SNIP's mask left no input-output path (the check itself:
    # tests/test_connectivity_rule.py): every weight off the paths.
    monkeypatch.setattr(
        scores,
        "effective_masks",
        lambda apply_fn, masks, *a, **k: jax.tree.map(lambda m: 0 * m, masks),
    )
    out = tmp_path / "run"
    rc = cli.main([*TINY, "--epochs", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "left no input-output path (effective sparsity 1)" in err
    assert "the network is disconnected" in err
    assert f"--resume {out} --allow-collapsed" in err
    assert not (out / "results.json").exists() and (out / "masks.npz").exists()
    rc = cli.main(["--resume", str(out), "--allow-collapsed", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "screening: the masks in" in captured.out and "(resumed)" in captured.out
    assert "warning: method 'snip'" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert results["disconnected"] and results["config"]["allow_collapsed"]
    assert results["effective_sparsity"] == 1.0 and len(results["bypassed_layers"]) == 3
