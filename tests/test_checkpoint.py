"""jpanning.checkpoint: a directory's lock (one live owner, released however it ends) and the
quiet handling of what orbax prints while failing to read a checkpoint."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jpanning import checkpoint
from jpanning.errors import JPanningError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLD = """
import sys, time
from jpanning import checkpoint
with checkpoint.owned(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_directory_has_one_live_owner_and_a_killed_one_lets_go(tmp_path):
    """Another process holding the lock refuses this one (naming its pid); SIGKILL, with no
    chance to clean up, releases it; the lock file stays, and a later owner takes it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = rf"^--out 'x' is in use by a live run \(process {holder.pid}, which holds "
        with pytest.raises(JPanningError, match=refused):
            with checkpoint.owned(str(tmp_path), "--out 'x'"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (tmp_path / checkpoint.LOCK_FILE).exists()
    with checkpoint.owned(str(tmp_path)) as path:
        assert open(path).read() == f"{os.getpid()}\n"
        with pytest.raises(JPanningError, match="is in use by a live run"):
            with checkpoint.owned(str(tmp_path)):  # a second open file, even in this process
                pass
    with checkpoint.owned(str(tmp_path)):  # released on leaving the block
        pass


def test_a_failed_restores_late_output_is_kept_out_of_stderr(capsys):
    """What a failing restore's background threads and orphaned asyncio tasks print to
    ``sys.stderr``, log or raise where nothing can catch it, even after it raised, stays in the
    kept text."""

    class Closed:
        def __del__(self):
            raise RuntimeError("Event loop is closed")

    def late():
        time.sleep(0.1)
        print("traceback from a background thread", file=sys.stderr)
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        Closed()  # an exception in __del__: sys.unraisablehook's

    with pytest.raises(ValueError, match="damaged"):
        with checkpoint._stderr_kept(settle=0.3) as kept:
            print("during", file=sys.stderr)
            threading.Thread(target=late).start()
            raise ValueError("damaged")
    assert capsys.readouterr().err == ""
    assert kept.getvalue().splitlines()[:3] == [
        "during",
        "traceback from a background thread",
        "ERROR:asyncio:Task exception was never retrieved",
    ]
    assert kept.getvalue().splitlines()[-1] == "RuntimeError: Event loop is closed"
