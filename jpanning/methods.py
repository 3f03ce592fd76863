"""Every pruning method, registered: the one place that imports them all.

:mod:`jpanning.pruning` holds the registry and the methods at initialization; RL Panning
(:mod:`jpanning.rlpanning`) and PuRL with its baseline (:mod:`jpanning.purl`) register
themselves in their own modules. Import :data:`METHODS` from here to see them all; a method of
your own registers with :func:`jpanning.pruning.register_method` in its module, imported here
(or anywhere before the run).
"""

# isort: off
# in this order: run.py --help lists the methods as they register
from jpanning import rlpanning  # noqa: F401 (registers rlpanning)
from jpanning import purl  # noqa: F401 (registers purl, uniform)
from jpanning.pruning import METHODS, Method, register_method

# isort: on

__all__ = ["METHODS", "Method", "register_method"]
