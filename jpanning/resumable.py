"""One way for a host loop to be stopped and resumed: :class:`Resumable`.

Training (:func:`jpanning.train.train`) and the agents' host loop
(:func:`jpanning.agents.loop.host_loop`) count their steps on the host. After each jitted call
they hand the steps just done to :meth:`Resumable.after`, which polls the stop request
(:class:`jpanning.checkpoint.StopSignal`), has the loop write a checkpoint when one is due
every ``checkpoints.every`` steps or a stop is pending, and raises
:class:`jpanning.checkpoint.Interrupted`; at a boundary that always checkpoints (an epoch's
end) :meth:`Resumable.boundary` does the same. :meth:`Resumable.restore` gives the newest
checkpoint back, and :meth:`Resumable.refuse` words the error for one that belongs to another
run. What a checkpoint holds (its state pytree and JSON ``meta``) stays the loop's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jpanning.checkpoint import Checkpoints, Interrupted, never
from jpanning.errors import JPanningError


@dataclasses.dataclass(frozen=True)
class Resumable:
    """The checkpoints and the stop poll of one loop.

    Attributes:
        checkpoints: where the loop's checkpoints live (None: the loop is not checkpointed,
            and a stop request still interrupts it).
        stop: polled once per :meth:`after` (unless ``last``) and per :meth:`boundary`;
            returns a signal name (``'SIGINT'``, ``'SIGTERM'``) when the loop should stop.
        unit: how messages name a step of this loop (``'step'``, ``'agent step'``).
    """

    checkpoints: Checkpoints | None = None
    stop: Callable[[], str | None] = never
    unit: str = "step"

    @property
    def every(self) -> int:
        """Steps between periodic checkpoints (0: none)."""
        return self.checkpoints.every if self.checkpoints is not None else 0

    def restore(self, like: Any, *, log: Callable[[str], None] = print, extra: bool = False):
        """The newest checkpoint as :meth:`jpanning.checkpoint.Checkpoints.restore` gives it,
        or None when there is none to resume from."""
        if self.checkpoints is None or self.checkpoints.latest() is None:
            return None
        return self.checkpoints.restore(like, log=log, extra=extra)

    def resumed(self, step: int, *, log: Callable[[str], None] = print, where: str = "") -> None:
        """Say that the loop goes on from checkpoint ``step`` (``where``: e.g. the epoch)."""
        log(f"resuming from the checkpoint at step {step}{where} in {self.checkpoints.directory}")

    def refuse(self, why: str) -> JPanningError:
        """The error for a checkpoint this run must not resume (``why``: what differs)."""
        return JPanningError(
            f"the checkpoint in {self.checkpoints.directory} {why}; it cannot be resumed by "
            "this run"
        )

    def save(self, step: int, state: Any, meta: dict, extra: Any = None) -> None:
        """Write checkpoint ``step`` (nothing without :attr:`checkpoints`)."""
        if self.checkpoints is not None:
            self.checkpoints.save(step, state, meta, extra)

    def after(
        self, before: int, after: int, checkpoint: Callable[[], None], *, last: bool = False
    ) -> None:
        """Steps ``before + 1 .. after`` are done: poll the stop request, call
        ``checkpoint()`` when a periodic checkpoint falls in that range or a stop is pending,
        and raise :class:`Interrupted` on a stop.

        ``last``: the loop's (or an epoch's) final step, which :meth:`boundary` or the caller
        handles: no poll, no periodic checkpoint.
        """
        signal_name = None if last else self.stop()
        every = self.every
        due = not last and every > 0 and after // every > before // every
        if due or signal_name:
            checkpoint()
        if signal_name:
            raise self.interrupted(signal_name, after)

    def boundary(self, step: int, checkpoint: Callable[[], None], *, final: bool) -> None:
        """A boundary that always checkpoints (an epoch's end, at ``step``): call
        ``checkpoint()``, poll the stop request and raise :class:`Interrupted` on one, unless
        ``final`` (the loop's end: the run finishes)."""
        checkpoint()
        signal_name = self.stop()
        if signal_name and not final:
            raise self.interrupted(signal_name, step)

    def interrupted(self, signal_name: str, step: int) -> Interrupted:
        """The :class:`Interrupted` of a stop at ``step``, naming the checkpoint written."""
        where = ""
        if self.checkpoints is not None:
            where = f"; checkpoint at step {step} in {self.checkpoints.directory}"
        return Interrupted(f"stopped by {signal_name} at {self.unit} {step}{where}", signal_name)
