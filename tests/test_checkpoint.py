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


_SAVE_ON_DEVICE_1 = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp
from jpanning import checkpoint
ckpt = checkpoint.Checkpoints(sys.argv[1])
on_1 = lambda x: jax.device_put(x, jax.devices()[1])
state = {"w": on_1(jnp.arange(6.0).reshape(2, 3)), "t": on_1(jnp.int32(7))}
ckpt.save(5, state, {"key": [1, 2]}, {"returns": on_1(jnp.array([-1.5, 2.0]))})
ckpt.close()
print(jax.devices()[1], state["w"].sharding)
"""


def test_a_checkpoint_written_on_another_device_opens_here(tmp_path):
    # The GPU search's checkpoints opened on a CPU: without a target, orbax restores each array
    # onto the device it was saved from and fails with "topology mismatch". Saved here on the
    # second of two simulated devices, read in this one-device process.
    directory = str(tmp_path / "search")
    proc = subprocess.run(
        [sys.executable, "-c", _SAVE_ON_DEVICE_1, directory],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TFRT_CPU_1" in proc.stdout or "cpu:1" in proc.stdout.lower(), proc.stdout
    import jax
    import numpy as np

    ckpt = checkpoint.Checkpoints(directory)
    step, state, meta, extra = ckpt.restore_saved()
    assert step == 5 and meta == {"key": [1, 2]}
    np.testing.assert_array_equal(state["w"], np.arange(6.0).reshape(2, 3))
    assert int(state["t"]) == 7
    np.testing.assert_array_equal(extra["returns"], [-1.5, 2.0])
    like = {"w": jax.numpy.zeros((2, 3)), "t": jax.numpy.int32(0)}
    step, state, meta, extra = ckpt.restore(like, extra=True)
    assert step == 5 and int(state["t"]) == 7
    assert state["w"].devices() == {jax.devices()[0]}
    np.testing.assert_array_equal(extra["returns"], [-1.5, 2.0])
