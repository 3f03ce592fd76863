"""The one resumable-loop helper: when it polls, when it checkpoints, how it stops.

Training and the agents' host loop run on it; tests/test_train.py and tests/test_td3.py check
that a loop stopped and resumed through it ends bit for bit where an uninterrupted one does.
"""

import pytest

from jpanning import checkpoint
from jpanning.errors import JPanningError
from jpanning.resumable import Resumable


class _Checkpoints:
    """Stands in for :class:`jpanning.checkpoint.Checkpoints` (the fields Resumable reads)."""

    def __init__(self, every=0, latest=None):
        self.directory, self.every, self._latest, self.saved = "/ckpt", every, latest, []

    def latest(self):
        return self._latest

    def save(self, step, state, meta, extra=None):
        self.saved.append(step)

    def restore(self, like, log=print, *, extra=False):
        return (self._latest, like, {"extra": extra})


def _polls(answers):
    calls = []

    def stop():
        calls.append(1)
        return answers[len(calls) - 1] if len(calls) <= len(answers) else None

    return stop, calls


def test_a_periodic_checkpoint_falls_where_a_multiple_of_every_is_crossed():
    loop = Resumable(_Checkpoints(every=4))
    written = []
    for before, after in [(0, 3), (3, 6), (6, 8), (8, 9), (9, 12)]:
        loop.after(before, after, lambda: written.append(after))
    assert written == [6, 8, 12]
    loop.after(12, 16, lambda: written.append(16), last=True)  # the end checkpoints itself
    assert written == [6, 8, 12]


def test_a_stop_checkpoints_then_raises_interrupted_naming_the_step_and_directory():
    stop, calls = _polls([None, "SIGINT"])
    loop = Resumable(_Checkpoints(), stop, unit="agent step")
    written = []
    loop.after(0, 1, lambda: written.append(1))
    with pytest.raises(checkpoint.Interrupted) as info:
        loop.after(1, 2, lambda: written.append(2))
    assert written == [2] and len(calls) == 2
    assert str(info.value) == "stopped by SIGINT at agent step 2; checkpoint at step 2 in /ckpt"
    assert info.value.exit_code == 130


def test_the_last_step_is_not_polled_and_a_final_boundary_does_not_stop():
    stop, calls = _polls(["SIGTERM", "SIGTERM"])
    loop = Resumable(None, stop)
    loop.after(0, 5, lambda: None, last=True)
    assert calls == []
    written = []
    loop.boundary(5, lambda: written.append(5), final=True)  # polled, but the run finishes
    assert written == [5] and len(calls) == 1
    with pytest.raises(checkpoint.Interrupted, match=r"^stopped by SIGTERM at step 5$"):
        loop.boundary(5, lambda: written.append(5), final=False)
    assert written == [5, 5]


def test_restore_only_when_there_is_a_checkpoint_and_refusals_name_the_directory():
    assert Resumable(None).restore("like") is None
    assert Resumable(_Checkpoints()).restore("like") is None
    assert Resumable(_Checkpoints(latest=7)).restore("like", extra=True)[0] == 7
    error = Resumable(_Checkpoints()).refuse("belongs to another run")
    assert isinstance(error, JPanningError)
    assert str(error) == (
        "the checkpoint in /ckpt belongs to another run; it cannot be resumed by this run"
    )
    logged = []
    Resumable(_Checkpoints()).resumed(7, log=logged.append, where=" (epoch 2)")
    assert logged == ["resuming from the checkpoint at step 7 (epoch 2) in /ckpt"]
