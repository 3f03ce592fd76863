"""The exception types jpanning raises for bad input and for runs that cannot go on.

The CLI prints ``str(error)`` as a single line and exits non-zero, so messages must name the
bad value and what is allowed, e.g. ``unknown model 'resnet7'; choose from: lenet5, resnet20``.
"""


class JPanningError(ValueError):
    """Bad input or an unusable state, with a one-line message meant for the user."""


class RunFailed(JPanningError):
    """The method or the recipe failed on this problem: a result, not a usage error.

    A mask through which no input reaches the output (``disconnected``), or a loss that turns
    NaN. The CLI treats it like any :class:`JPanningError`; the benchmark harness records it
    as the cell's outcome (a method that cannot reach a ratio is a finding) instead of
    stopping: a disconnected mask at chance accuracy, as the literature reports it.

    Args:
        message: the one-line message.
        disconnected: the mask left no input-output path (every path crosses an emptied
            layer; effective sparsity 1): the network can only output its biases.
    """

    def __init__(self, message: str, *, disconnected: bool = False):
        super().__init__(message)
        self.disconnected = disconnected
