"""The one exception type jpanning raises for bad input.

The CLI prints ``str(error)`` as a single line and exits non-zero, so messages must name the
bad value and what is allowed, e.g. ``unknown model 'resnet7'; choose from: lenet5, resnet20``.
"""


class JPanningError(ValueError):
    """Bad input or an unusable state, with a one-line message meant for the user."""
