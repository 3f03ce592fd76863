"""The vocabulary of ``run.py`` options: parsers, :func:`option` and :func:`flag` (a field
that is also a flag), and the options several pruning methods read (:data:`SHARED`).

:mod:`jpanning.config` builds a run's settings from these; a method's options dataclass
(``PanningOptions``, ``RLPanningOptions``, ...) takes its fields from here too, so a method's
module needs no import of the config (which imports the methods).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jpanning.scores import TEMPERATURE

# ---------------------------------------------------------------------------------------------
# Parsers: text (from the command line) or a value (from Python or run.json) to a checked
# value; a ValueError's message names the bad value and what is allowed.


def ratio(value) -> float:
    """A sparsity in (0, 1)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number; give a fraction in (0, 1)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number; give a fraction in (0, 1)")
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{value} is outside (0, 1): it is the fraction of prunable weights removed"
        )
    return float(value)


_A = {int: "an integer", float: "a number"}


def positive(kind: type) -> Callable:
    """A parser of positive ``kind`` (int or float) numbers."""

    def parse(value):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ValueError(f"{value!r} is not {_A[kind]}")
        ok = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            raise ValueError(f"{value!r} is not {_A[kind]}")
        if not value > 0:
            raise ValueError(f"{value} must be positive")
        return kind(value)

    parse.__name__ = f"positive_{kind.__name__}"
    return parse


def number(kind: type) -> Callable:
    """A parser of any ``kind`` (int or float) number."""

    def parse(value):
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError
            if kind is int and isinstance(value, float):
                raise ValueError
            return kind(value)
        except ValueError:
            raise ValueError(f"{value!r} is not {_A[kind]}")

    parse.__name__ = kind.__name__
    return parse


def weights(value) -> tuple[float, float, float]:
    """Three non-negative fusion weights, SynFlow, SNIP, GraSP (text: ``.2,.5,.3``)."""
    try:
        values = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (ValueError, TypeError):
        values = ()
    if len(values) != 3 or min(values) < 0:
        text = value if isinstance(value, str) else ",".join(map(str, value))
        raise ValueError(
            f"{text!r} is not three non-negative numbers SYNFLOW,SNIP,GRASP (e.g. .2,.5,.3)"
        )
    return values


def text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def option(default, help: str = "", *, parse: Callable = text, choices=None, metavar=None,
           nargs=None):  # fmt: skip
    """A field that is also a ``run.py`` option.

    Args:
        default: the field's default (the option's).
        help: the option's help text.
        parse: text or value to a checked value (raises ValueError with a one-line message).
        choices: the allowed values, or a function returning them (the registries).
        metavar, nargs: as for ``argparse``; ``nargs='+'`` fields hold tuples.
    """
    meta = dict(help=help, parse=parse, choices=choices, metavar=metavar, nargs=nargs)
    return dataclasses.field(default=default, metadata=meta)


def flag(help: str):
    """A boolean option, off unless given (``action='store_true'``)."""
    return dataclasses.field(default=False, metadata=dict(help=help, flag=True))


# ---------------------------------------------------------------------------------------------
# The options several methods read, each defined once here (a method's options dataclass takes
# them with :func:`shared`); an option only one method reads is a field of its own dataclass.
# ``run.py --help`` names the methods that read each.

SHARED = {
    "rounds": dict(
        default=None,
        help="rounds T of the iterative screening (default 100; rlpanning: the preset's, or "
        "the policy's)",
        parse=positive(int),
    ),
    "temperature": dict(
        default=TEMPERATURE,
        help="SNIP/GraSP taken at logits / temperature (GraSP's code: 200)",
        parse=positive(float),
    ),
    "chunk_size": dict(
        default=None,
        help="score the scoring batch in chunks of this many examples (bounded memory; "
        "train-mode BatchNorm then normalises each chunk by its own statistics)",
        parse=positive(int),
    ),
    "scoring": dict(
        default=None,
        help="SNIP/GraSP on a new class-balanced batch every round or step (fresh; the "
        "authors', the default) or on a pool of --pool-size batches scored once (pool); "
        "screening with a policy: default the policy's own",
        choices=("fresh", "pool"),
    ),
    "pool_size": dict(
        default=None,
        help="--scoring pool: scoring batches in the pool (default: panning 1, rlpanning the "
        "preset's)",
        parse=positive(int),
    ),
    "fusion": dict(
        default="add",
        help="fuse the metrics as a weighted sum (add; the authors' default) or a product of "
        "powers (mul; with its own hand staircase)",
        choices=("add", "mul"),
    ),
    "collapse_shield": dict(
        default="synflow",
        help="at screening, on a round whose fusion weights would empty a prunable layer, use "
        "SynFlow's weights alone for that round (synflow, jpanning's default: SynFlow avoids "
        "layer collapse) or keep the fused mask (off, the authors'); never inside an RL "
        "search, whose collapse penalty is the authors'",
        choices=("synflow", "off"),
    ),
    "preset": dict(
        default=None,
        help="search budget (for rlpanning it implies --search); paper, the default: the "
        "authors' (rlpanning: 50k agent steps, T=100, 256-256 MLPs; purl: 55 episodes, 1,000 "
        "retraining images per layer); quick: minutes on a CPU (rlpanning: 200 steps, T=20, "
        "64-64 MLPs; purl: 8 episodes, 128 images): a smoke test",
        choices=("paper", "quick"),
    ),
    "pretrained": dict(
        default=None,
        help="prune this trained network (a dense run's model.npz) instead of training one first",
        metavar="PATH",
    ),
    "pretrain_epochs": dict(
        default=None,
        help="epochs of the dense training before pruning (default: --epochs)",
        parse=positive(int),
    ),
}


def shared(name: str):
    """The field of the option ``name`` that several methods read (:data:`SHARED`), for a
    method's options dataclass: ``rounds: Optional[int] = shared("rounds")``."""
    return option(**SHARED[name])
