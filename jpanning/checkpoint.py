"""Checkpoints (orbax) and stop requests (SIGINT/SIGTERM) for long runs.

A checkpoint is one orbax step directory holding a pytree ``state`` (arrays) and a JSON
``meta`` (where the loop stands: epoch, batch, the shuffling generator's state, running sums,
history). Orbax writes each step to a temporary directory and renames it when complete, so a
run killed mid-write leaves the previous checkpoints intact; the newest ``keep`` are kept.

Signals are turned into a flag that the loops poll between jitted steps
(:class:`StopSignal`): the loop finishes its step, writes a checkpoint and raises
:class:`Interrupted`, and ``run.py --resume OUT`` continues from there.

A run owns its directory while it lives (:func:`owned`): an exclusive ``fcntl.flock`` on
``<directory>/.lock``, which the kernel releases when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import jax
import numpy as np

from jpanning.errors import JPanningError

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
LOCK_FILE = ".lock"  # in a live run's directory; holds its pid


@contextlib.contextmanager
def owned(directory: str, name: str | None = None):
    """Hold ``directory``'s lock (:data:`LOCK_FILE`, an exclusive ``fcntl.flock``) for the
    ``with`` body: one live run per directory.

    The lock belongs to the open file, so the kernel releases it when the process ends, a
    crash or SIGKILL included: a lock file left behind never blocks a later run. The file
    stays (removing it could let two runs lock two different files) and holds the owner's pid.
    Where ``fcntl`` is missing (not a POSIX system) nothing is locked.

    Args:
        directory: an existing directory.
        name: what errors call it (default: the directory's path).

    Yields:
        The lock file's path.

    Raises:
        JPanningError: another live process holds the lock.
    """
    try:
        import fcntl
    except ImportError:
        yield None
        return
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise JPanningError(
                f"{name or repr(directory)} is in use by a live run (process {owner}, which "
                f"holds {path}); wait for it to end, or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


class Interrupted(JPanningError):
    """A run stopped on request after writing a checkpoint; ``exit_code`` 130 or 143."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signal_name, 1)


class StopSignal:
    """Context manager: while active, SIGINT and SIGTERM set :attr:`requested` (the signal's
    name) instead of killing the process; the previous handlers come back on exit.

    A second signal of the same kind while a stop is pending raises ``KeyboardInterrupt`` (the
    user insists). Outside the main thread, where Python cannot install handlers, it is inert.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __call__(self) -> str | None:
        return self.requested

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested == name:
            raise KeyboardInterrupt
        self.requested = name

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def never() -> None:
    """The stop poll of a run that cannot be interrupted."""
    return None


class _Kept(io.TextIOBase):
    """A text stream that keeps what is written to it (from any thread) and when."""

    def __init__(self):
        self.parts: list[str] = []
        self.last = time.monotonic()
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.parts.append(text)
            self.last = time.monotonic()
        return len(text)

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self.parts)


def _settle(kept: _Kept, settle: float, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < min(kept.last + settle, deadline):
        time.sleep(0.05)


@contextlib.contextmanager
def _stderr_kept(settle: float = 0.25, limit: float = 5.0):
    """``sys.stderr``, the ``asyncio`` logger and ``sys.unraisablehook`` kept (a
    :class:`_Kept`, yielded) for the body and, when the body raised, until nothing more was written for ``settle`` seconds (at
    most ``limit``), before and after a garbage collection.

    When orbax fails to read a damaged checkpoint, tensorstore's reads still in flight finish
    in background threads after the restore has given up, each printing a traceback ("Event
    loop is closed", through ``sys.unraisablehook``) within milliseconds (~1,300 lines of
    ``sys.stderr`` for a ResNet), and
    its orphaned asyncio tasks log "Task exception was never retrieved" whenever they are
    garbage-collected: the collection here makes that happen inside the window."""
    kept = _Kept()
    log = logging.getLogger("asyncio")
    handler = logging.StreamHandler(kept)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False

    def unraisable(info):
        kept.write("".join(traceback.format_exception(info.exc_value)))

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    failed = False
    try:
        with contextlib.redirect_stderr(kept):
            try:
                yield kept
            except BaseException:
                failed = True
                _settle(kept, settle, limit)
                gc.collect()
                _settle(kept, settle, limit)
                raise
    finally:
        # After a failed restore the process is about to stop with one line: late tracebacks
        # of orphaned tasks (a loaded machine can delay them past the window) stay kept.
        if not failed:
            sys.unraisablehook = hook
            log.removeHandler(handler)
            log.propagate = propagate


class Checkpoints:
    """Numbered checkpoints of one loop in ``directory`` (an orbax ``CheckpointManager``).

    Args:
        directory: created if missing.
        every: also checkpoint every this many steps inside an epoch (0: only where the loop
            chooses, at epoch ends and on a stop request).
        keep: how many of the newest checkpoints stay on disk.
        verbose: show what orbax and tensorstore print to ``sys.stderr`` while failing to read
            a damaged checkpoint (hundreds of lines of background-thread tracebacks);
            otherwise it is dropped, and :meth:`restore` reports each failure in one line.
    """

    def __init__(self, directory: str, every: int = 0, keep: int = 2, verbose: bool = False):
        import orbax.checkpoint as ocp

        self.directory = os.path.abspath(directory)
        self.every = int(every)
        self.verbose = bool(verbose)
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict, extra: Any = None) -> None:
        """Write checkpoint ``step`` (replacing one already there with that number).

        ``extra``: an optional pytree of arrays whose shapes vary between checkpoints (such as
        the metrics of the steps so far), restored as saved.
        """
        ocp = self._ocp
        if step in self._manager.all_steps():
            self._manager.delete(step)
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if extra is not None:
            items["extra"] = ocp.args.StandardSave(extra)
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, log=print, *, extra: bool = False) -> tuple:
        """The newest readable checkpoint, as ``(step, state, meta)``; with ``extra``,
        ``(step, state, meta, extra)``, the saved extra pytree as numpy arrays.

        ``like`` is a pytree with the structure, shapes and dtypes of the saved state; the
        restored state has its tree structure (optax's named tuples included). A checkpoint
        that cannot be read is reported and the next older one tried.

        Raises:
            JPanningError: no checkpoint, or none readable.
        """
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        errors = []
        for step in reversed(self.steps()):
            try:
                items = {
                    "state": ocp.args.StandardRestore(abstract),
                    "meta": ocp.args.JsonRestore(),
                }
                if extra:
                    items["extra"] = ocp.args.StandardRestore(self._saved_like(step, "extra"))
                got = self._restore(step, ocp.args.Composite(**items))
                leaves = jax.tree.leaves(got.state)
                state = jax.tree.unflatten(jax.tree.structure(like), leaves)
                _check_shapes(like, state)
                if errors:
                    log(f"warning: skipped unreadable checkpoint(s): {'; '.join(errors)}")
                if extra:
                    return step, state, dict(got.meta), jax.tree.map(np.asarray, got.extra)
                return step, state, dict(got.meta)
            except Exception as e:  # orbax/tensorstore raise many types on damaged files
                errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        if not errors:
            raise JPanningError(f"no checkpoint in {self.directory}")
        raise JPanningError(
            f"no readable checkpoint in {self.directory} ({'; '.join(errors)}); delete the "
            "directory to start that stage over"
        )

    def restore_saved(self) -> tuple:
        """The newest checkpoint as saved, without a template: ``(step, state, meta, extra)``
        with ``state`` and ``extra`` nested dicts of numpy arrays (a dataclass's fields by
        name), for reading a part of a state without building the whole (e.g. the actor of a
        search that is still running).

        Raises:
            JPanningError: no checkpoint, or the newest is not readable.
        """
        ocp = self._ocp
        step = self.latest()
        if step is None:
            raise JPanningError(f"no checkpoint in {self.directory}")
        try:
            items = {
                "state": ocp.args.StandardRestore(self._saved_like(step, "state")),
                "meta": ocp.args.JsonRestore(),
            }
            if os.path.isdir(os.path.join(self.directory, str(step), "extra")):
                items["extra"] = ocp.args.StandardRestore(self._saved_like(step, "extra"))
            got = self._restore(step, ocp.args.Composite(**items))
        except Exception as e:  # orbax/tensorstore raise many types on damaged files
            raise JPanningError(
                f"checkpoint {step} in {self.directory} is not readable "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            )
        as_numpy = lambda tree: jax.tree.map(np.asarray, tree)
        extra = as_numpy(got.extra) if "extra" in items else None
        return step, as_numpy(got.state), dict(got.meta), extra

    def _saved_like(self, step: int, item: str):
        """The saved tree of ``item`` as shapes and dtypes on this process's first device.

        Without a target orbax restores each array onto the device it was saved from, so a
        checkpoint written on a GPU would not open on a CPU ("topology mismatch").
        """
        ocp = self._ocp
        path = os.path.join(self.directory, str(step), item)
        saved = ocp.StandardCheckpointer().metadata(path).item_metadata
        saved = getattr(saved, "tree", saved)
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here)
            if hasattr(m, "shape") and hasattr(m, "dtype") else m,
            saved,
        )

    def _restore(self, step: int, args):
        """orbax's restore of ``step``, with what it prints to ``sys.stderr`` kept
        (:func:`_stderr_kept`): passed on after a success, and after a failure only when
        :attr:`verbose`."""
        kept = None
        try:
            with _stderr_kept() as kept:
                got = self._manager.restore(step, args=args)
        except Exception:
            if self.verbose:
                sys.stderr.write(kept.getvalue() if kept is not None else "")
            raise
        sys.stderr.write(kept.getvalue())
        return got

    def close(self) -> None:
        self._manager.close()


def _check_shapes(like, state) -> None:
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(state)):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(f"saved array {np.shape(b)} does not match {np.shape(a)}")


@contextlib.contextmanager
def opened(directory: str | None, every: int = 0, verbose: bool = False):
    """:class:`Checkpoints` in ``directory`` for the ``with`` body (None: yields None)."""
    if directory is None:
        yield None
        return
    ckpt = Checkpoints(directory, every, verbose=verbose)
    try:
        yield ckpt
    finally:
        ckpt.close()
