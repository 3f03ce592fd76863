"""A run's folder (``run.py --out``): its lock, its settings (``run.json``) and run id, how it
ended, and each stage's saved result.

One run lives in one folder. ``run.json`` holds its settings and its ``run_id``; each stage
writes its result tied to that id: ``pretrained.npz`` with ``pretrained.json`` (PuRL's dense
network), ``masks.npz`` with ``screen.json`` (the screening), then ``results.json`` (the run
finished) or ``failed.json`` (the method failed on the problem, a result too). A stage file
with another run's id is stale (an ``--overwrite``): the stage runs again. A folder whose run
neither finished nor failed but left stage files or checkpoints was interrupted, and
``--resume`` goes on from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Optional

from jpanning import checkpoint, parallel, report
from jpanning.config import RUN_FILE
from jpanning.errors import JPanningError

SCREEN_FILES = ("masks.npz", "screen.json")  # the screening's result, reused by resume
PRETRAINED_FILES = ("pretrained.npz", "pretrained.json")  # PuRL's dense network, reused too
ENDINGS = (("results.json", "finished"), ("failed.json", "failed"))


def read_json(path: str):
    """The JSON in ``path``, or None when it is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_id_of(record) -> Optional[str]:
    """The run_id a results.json (in its config), failed.json, run.json or stage record
    holds."""
    if not isinstance(record, dict):
        return None
    return record.get("run_id", (record.get("config") or {}).get("run_id"))


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The folder ``path`` of one run."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))

    def read(self, name: str):
        """The JSON file ``name`` of the folder, or None (missing, not JSON)."""
        return read_json(self.file(name))

    @property
    def run_id(self) -> Optional[str]:
        """The id of the run whose settings run.json holds (None: no run.json)."""
        return run_id_of(self.read(RUN_FILE))

    def ended(self) -> Optional[str]:
        """'finished' or 'failed' when the run of run.json has ended, else None."""
        run_id = self.run_id
        for name, how in ENDINGS:
            record = self.read(name)
            if record is not None and run_id_of(record) == run_id:
                return how
        return None

    def interrupted(self) -> Optional[str]:
        """What a stopped run (not finished, not failed) left here to resume from, as text
        (None: nothing to resume)."""
        if not self.has(RUN_FILE) or self.ended():
            return None
        left = [f for f in (*SCREEN_FILES, PRETRAINED_FILES[0]) if self.has(f)]
        ckpt = self.file("checkpoints")
        if os.path.isdir(ckpt) and any(os.scandir(ckpt)):
            left.append("checkpoints/")
        return ", ".join(left) or None

    def check_writable(self) -> None:
        """Fail before any work if the folder cannot be created or written."""
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = self.file(f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            raise JPanningError(f"--out {self.path!r} is not writable: {e.strerror or e}")

    def own(self, owned: contextlib.ExitStack, *, resume: bool, overwrite: bool) -> None:
        """Hold the folder's lock until ``owned`` closes (:func:`jpanning.checkpoint.owned`:
        one live run per folder; only the process that writes results locks), then, for a
        new run (not ``resume``), refuse a folder with a finished run (results.json) unless
        ``overwrite``, which removes its results.json and any checkpoints/ first, or one
        with an interrupted run."""
        out = self.path
        if parallel.is_primary():
            owned.enter_context(checkpoint.owned(out, f"--out {out!r}"))
        if resume:
            return
        if self.has("results.json"):
            if not overwrite:
                raise JPanningError(
                    f"--out {out!r} holds a finished run (results.json); replace it with "
                    "--overwrite, or choose another --out"
                )
            if parallel.is_primary():
                os.unlink(self.file("results.json"))
                shutil.rmtree(self.file("checkpoints"), ignore_errors=True)
            return
        left = self.interrupted()
        if left:
            raise JPanningError(
                f"--out {out!r} holds an interrupted run ({left}); continue it with "
                f"--resume {out}, or choose another --out (or delete that one) to start over"
            )

    def write_settings(self, saved: dict) -> None:
        """run.json: the run's settings and run_id (atomically)."""
        report.write_json(self.file(RUN_FILE), saved)

    def write_record(self, name: str, record: dict, run_id: Optional[str]) -> None:
        """A stage's JSON record, tied to ``run_id``."""
        report.write_json(self.file(name), record | {"run_id": run_id})

    def stage_record(self, name: str, run_id: Optional[str]) -> Optional[dict]:
        """The JSON record ``name`` of run ``run_id`` (its run_id removed), or None: missing,
        unreadable, or another run's."""
        record = self.read(name)
        if not isinstance(record, dict) or record.get("run_id") != run_id:
            return None
        return {k: v for k, v in record.items() if k != "run_id"}
