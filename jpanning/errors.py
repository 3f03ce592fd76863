"""The exception types jpanning raises for bad input and for runs that cannot go on.

The CLI prints ``str(error)`` as a single line and exits non-zero, so messages must name the
bad value and what is allowed, e.g. ``unknown model 'resnet7'; choose from: lenet5, resnet20``.
"""


class JPanningError(ValueError):
    """Bad input or an unusable state, with a one-line message meant for the user."""


class RunFailed(JPanningError):
    """The method or the recipe failed on this problem: a result, not a usage error.

    A mask that cuts a layer or every input-output path, or a loss that turns NaN. The CLI
    treats it like any :class:`JPanningError`; the benchmark harness records it as the
    cell's outcome (a method that cannot reach a ratio is a finding) instead of stopping.
    """
