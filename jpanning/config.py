"""A run's settings as one frozen, typed dataclass: :class:`RunConfig`.

Every ``run.py`` option is a field: of one of its parts (:class:`DataConfig`,
:class:`PruningConfig`, :class:`TrainingConfig`, :class:`OutputConfig`), or of the pruning
method's own options dataclass (``config.pruning.options``: :class:`jpanning.pruning.Method`'s
``options``, e.g. ``PanningOptions``), with its help text and its parser next to it
(``metadata``). The command line is built from these fields (:mod:`jpanning.cli`: every
registered method's options, each named once) and a run from Python needs no command line
(:mod:`jpanning.experiment`).

Field names are unique and equal the options' names (``--pool-size`` is ``pool_size``); an
option several methods read means the same for each (:data:`SHARED`). So a config is also a
flat dict: :meth:`RunConfig.flat` and :meth:`RunConfig.from_flat` are what a run folder's
``run.json`` holds (the method's own options only) and is read from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from jpanning.errors import JPanningError
from jpanning.options import (  # noqa: F401 (the parsers are config's vocabulary too)
    SHARED,
    flag,
    number,
    option,
    positive,
    ratio,
    shared,
    text,
    weights,
)

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "synthetic")
RUN_FILE = "run.json"  # the run's settings (and its run_id), for --resume
# settings a resumed run takes from its own call, not from run.json
NOT_SAVED = ("resume", "no_progress", "out", "overwrite", "verbose")
# what --resume may change: how the run goes on, not what it computes (--allow-collapsed lets a
# refused, disconnected mask train without redoing its search)
RESUME_MAY_SET = (
    "allow_collapsed", "devices", "checkpoint_every", "data_dir", "no_progress", "verbose"
)  # fmt: skip
PATH_FIELDS = ("pretrained", "policy", "data_dir")  # saved absolute, so --resume works anywhere


def _models():
    from jpanning.models import MODELS

    return tuple(MODELS)


def _registry() -> dict:
    from jpanning.methods import METHODS

    return METHODS


def _methods():
    return tuple(_registry())


def _choices(meta) -> Optional[tuple]:
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


# ---------------------------------------------------------------------------------------------
# The parts


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it."""

    dataset: Optional[str] = option(
        None,
        f"{', '.join(DATASETS)}; default: cifar10 when tfds can provide it, else fashion_mnist",
        choices=DATASETS,
        metavar="DATASET",
    )
    samples_per_class: int = option(
        10,
        "scoring batch: training examples per class given to the scorers",
        parse=positive(int),
    )
    train_limit: Optional[int] = option(
        None, "use a seeded subset of this many training examples (quick runs)", parse=positive(int)
    )
    test_limit: Optional[int] = option(
        None, "use a seeded subset of this many test examples", parse=positive(int)
    )
    data_dir: Optional[str] = option(
        None, "tfds data directory (default: $JPANNING_DATA_DIR or ~/tensorflow_datasets)"
    )


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """The pruning method, its sparsity and scope, and the method's own options.

    ``options`` is an instance of the method's options dataclass
    (:attr:`jpanning.pruning.Method.options`: ``PanningOptions``, ``RLPanningOptions``,
    ``PuRLOptions``, ...); a dict of its fields, or None for its defaults, becomes one.
    """

    ratio: float = option(
        0.95, "sparsity: fraction of prunable weights removed, in (0, 1)", parse=ratio
    )
    method: str = option(
        "rlpanning", "pruning method: {choices}", choices=_methods, metavar="METHOD"
    )
    scope: str = option(
        "global", "rank weights over all layers together or per layer", choices=("global", "layer")
    )
    options: Any = None

    def __post_init__(self):
        methods = _registry()
        if self.method not in methods:
            return  # RunConfig.validate names the unknown method
        cls = methods[self.method].options
        if self.options is None or isinstance(self.options, dict):
            given = self.options or {}
            unknown = sorted(set(given) - {f.name for f in _fields(cls)})
            if unknown:
                raise JPanningError(
                    f"--method {self.method} has no option(s) {', '.join(unknown)} "
                    f"({cls.__name__})"
                )
            object.__setattr__(self, "options", cls(**given))
        elif type(self.options) is not cls:
            raise JPanningError(
                f"--method {self.method} takes its options as a {cls.__name__}, "
                f"not a {type(self.options).__name__}"
            )

    def option(self, name: str, default=None):
        """The method's option ``name``, or ``default`` when the method has none by that name
        (``config.pruning.option("pretrained")``)."""
        return getattr(self.options, name, default)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The training recipe, and how training is split over devices and checkpointed."""

    epochs: int = option(160, parse=positive(int))
    batch_size: int = option(128, parse=positive(int))
    lr: float = option(0.1, parse=positive(float))
    momentum: float = option(0.9, parse=number(float))
    weight_decay: float = option(5e-4, parse=number(float))
    checkpoint_every: Optional[int] = option(
        None,
        "also checkpoint training every STEPS steps (always: at each epoch end and on "
        "SIGINT/SIGTERM)",
        parse=positive(int),
        metavar="STEPS",
    )
    devices: Optional[int] = option(
        None,
        "split batches over the first N devices (default: all; see jpanning.parallel)",
        parse=positive(int),
    )
    allow_collapsed: bool = flag(
        "train even a mask through which no input reaches the output (effective sparsity 1; "
        "refused otherwise): it can only learn its biases, so it scores chance accuracy. "
        "A mask whose emptied layers the network routes around (a ResNet's residual "
        "branches) trains without it"
    )


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where the run writes, and how it talks: nothing here changes what it computes."""

    out: Optional[str] = option(None, "output directory (default: runs/<run name>)")
    resume: Optional[str] = option(
        None,
        "continue the interrupted run in OUT with its own arguments (run.json): "
        "screening is not redone once masks.npz is there, training goes on from the newest "
        "checkpoint; the other arguments are ignored",
        metavar="OUT",
    )
    overwrite: bool = flag(
        "run into an --out that holds a finished run (results.json, refused otherwise): "
        "its results.json and any checkpoints/ are removed first, its other files replaced "
        "as this run writes them"
    )
    verbose: bool = flag(
        "on an error, the tracebacks too (Python's, and what orbax prints while failing "
        "to read a damaged checkpoint), not just the one line"
    )
    no_progress: bool = flag("hide progress bars")


# Method options newer than run.json files that may still be resumed: a run.json without one
# ran with the value given here (the authors' TD3 critic loss before --critic-loss existed; no
# collapse shield before --collapse-shield existed).
ADDED_LATER = {"critic_loss": None, "collapse_shield": "off"}

PARTS = {"data": DataConfig, "pruning": PruningConfig, "training": TrainingConfig,
         "output": OutputConfig}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: the model, the seed and the four parts.

    ``run_id`` is set when the run starts (:func:`jpanning.experiment.run`); it ties the
    folder's results.json, failed.json and screen.json to this run.
    """

    model: str = option("resnet20", "network: {choices}", choices=_models, metavar="MODEL")
    seed: int = option(0, parse=number(int))
    data: DataConfig = DataConfig()
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()
    run_id: Optional[str] = None

    def __post_init__(self):
        for part, cls in PARTS.items():
            if not isinstance(getattr(self, part), cls):
                raise JPanningError(f"RunConfig.{part} must be a {cls.__name__}")
        self.validate()

    @classmethod
    def from_flat(cls, flat: dict, *, saved: bool = False) -> RunConfig:
        """The config of a flat dict (``vars(args)``, :meth:`flat`, run.json); missing keys
        take defaults.

        A method's option given for a method that does not read it is refused, unless it is
        None or that option's default (a parsed command line holds every option).
        ``saved=True`` reads a run.json: one written before the methods owned their options
        held every method's (all flat, the method's among them); the others are dropped, and
        an option added since (:data:`ADDED_LATER`) reads as what that run used. This is the
        one place that migrates an old run.json.

        Raises:
            JPanningError: a key that is no setting, or a value :meth:`validate` refuses.
        """
        every = option_fields()
        unknown = sorted(set(flat) - set(FIELDS) - set(every) - {"run_id"})
        if unknown:
            raise JPanningError(f"unknown run setting(s) {', '.join(unknown)}")
        given = {k: _normalise(v) for k, v in flat.items()}
        method = given.get("method", PruningConfig.method)
        check_value("method", method)
        own = option_fields(method)
        if saved:
            given = {k: v for k, v in ADDED_LATER.items() if k in own} | given
        options = {}
        for name in (k for k in given if k in every):
            if name in own:
                options[name] = given[name]
            elif not (saved or given[name] is None or given[name] == every[name].default):
                _refuse(name, method)
        parts = {
            part: part_cls(**{f.name: given[f.name] for f in _fields(part_cls) if f.name in given})
            for part, part_cls in PARTS.items()
            if part != "pruning"
        }
        pruning = {k: given[k] for k in ("ratio", "scope") if k in given}
        options = _registry()[method].options(**options)
        parts["pruning"] = PruningConfig(**pruning, method=method, options=options)
        top = {k: given[k] for k in ("model", "seed", "run_id") if k in given}
        return cls(**top, **parts)

    def flat(self) -> dict:
        """``{option: value}`` in :func:`order` (the method's own options only), then
        ``run_id`` (results.json's ``config``)."""
        own = option_fields(self.pruning.method)
        out = {}
        for name in order():
            if name in own:
                out[name] = getattr(self.pruning.options, name)
            elif name in FIELDS:
                part = FIELDS[name]
                out[name] = getattr(self if part is None else getattr(self, part), name)
        out["run_id"] = self.run_id
        return {k: _jsonable(v) for k, v in out.items()}

    def saved(self) -> dict:
        """What run.json holds: :meth:`flat` without :data:`NOT_SAVED`."""
        return {k: v for k, v in self.flat().items() if k not in NOT_SAVED}

    def replace(self, **changes) -> RunConfig:
        """A copy with the flat settings ``changes`` (``config.replace(ratio=0.9)``); a new
        ``method`` keeps only the options it reads too."""
        flat = self.flat()
        if changes.get("method", self.pruning.method) != self.pruning.method:
            own, every = option_fields(changes["method"]), option_fields()
            flat = {k: v for k, v in flat.items() if k not in every or k in own}
        return RunConfig.from_flat(flat | changes)

    def validate(self) -> RunConfig:
        """Check every setting; returns self.

        Raises:
            JPanningError: one line naming the bad setting, its value and what is allowed.
        """
        for name, part in FIELDS.items():
            obj = self if part is None else getattr(self, part)
            check_value(name, getattr(obj, name))
        for field in dataclasses.fields(self.pruning.options):
            check_value(field.name, getattr(self.pruning.options, field.name), field)
        return self


def _fields(cls) -> tuple:
    return dataclasses.fields(cls)


def _normalise(value):
    """Lists (JSON, argparse's nargs) to tuples, so a config is immutable."""
    if isinstance(value, list):
        return tuple(_normalise(v) for v in value)
    return value


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def check_value(name: str, value, field: Optional[dataclasses.Field] = None) -> Any:
    """``value`` for setting ``name`` (its ``field``, default :func:`field_of`) checked (and
    parsed, if text); a one-line error else."""
    field = field or field_of(name)
    meta, default = field.metadata, field.default
    if value is None and default is None:
        return None
    if meta.get("flag"):
        if not isinstance(value, bool):
            raise JPanningError(f"{name}: {value!r} is not True or False")
        return value
    choices = _choices(meta)
    values = value if meta.get("nargs") else (value,)
    if meta.get("nargs") and (not isinstance(value, tuple) or not value):
        raise JPanningError(f"{name}: {value!r} is not a non-empty list")
    parsed = []
    for v in values:
        if choices is not None:
            if v not in choices:
                raise JPanningError(f"unknown {name} {v!r}; choose from: {', '.join(choices)}")
            parsed.append(v)
            continue
        try:
            parsed.append(meta["parse"](v))
        except ValueError as e:
            raise JPanningError(f"{name}: {e}")
    return tuple(parsed) if meta.get("nargs") else parsed[0]


def owners(name: str) -> list[str]:
    """The methods whose options include ``name``, in registration order."""
    return [m for m, entry in _registry().items() if name in option_fields(m)]


def _refuse(name: str, method: str) -> None:
    """Refuse an option for a method whose options do not include it."""
    methods = owners(name)
    flag_name = "--" + name.replace("_", "-")
    if len(methods) == 1:
        who = f"--method {methods[0]}"
    elif all(_registry()[m].trained for m in methods):
        who = f"the methods that prune a trained network ({', '.join(methods)})"
    else:
        who = f"the methods {', '.join(methods)}"
    raise JPanningError(f"{flag_name} is for {who}, not {method!r}")


# Where each common setting lives: FIELDS[name] is the part's attribute (None: RunConfig's own).
# The methods' options are fields of their own dataclasses (:func:`option_fields`).
FIELDS: dict[str, Optional[str]] = {}
_FIELD_OF: dict[str, dataclasses.Field] = {}
for _f in _fields(RunConfig):
    if _f.name in ("model", "seed"):
        FIELDS[_f.name], _FIELD_OF[_f.name] = None, _f
for _part, _cls in PARTS.items():
    for _f in _fields(_cls):
        if _f.name != "options":
            FIELDS[_f.name], _FIELD_OF[_f.name] = _part, _f


def option_fields(method: Optional[str] = None) -> dict[str, dataclasses.Field]:
    """``{name: field}`` of ``method``'s options, or of every registered method's (one
    field per name; methods that share an option must define it alike, with
    :func:`shared`)."""
    methods = _registry()
    if method is not None:
        return {f.name: f for f in _fields(methods[method].options)}
    out: dict[str, dataclasses.Field] = {}
    for entry in methods.values():
        for f in _fields(entry.options):
            first = out.setdefault(f.name, f)
            if (first.default, first.metadata) != (f.default, f.metadata):
                raise JPanningError(
                    f"method {entry.name!r} defines option {f.name!r} unlike another method; "
                    f"share one definition (jpanning.config.shared)"
                )
    return out


def field_of(name: str) -> dataclasses.Field:
    """The field of setting ``name``: a common one, or a method's option."""
    return _FIELD_OF[name] if name in _FIELD_OF else option_fields()[name]


def order() -> tuple[str, ...]:
    """Every setting in the order ``run.py --help`` lists them and run.json holds them: the
    model and seed, the data, the method, its options, the training, the output."""
    names = [n for n in FIELDS if FIELDS[n] in (None, "data", "pruning")]
    names += list(option_fields())
    return tuple(names + [n for n in FIELDS if FIELDS[n] in ("training", "output")])


def help_of(name: str) -> str:
    """The help text of setting ``name``, with its choices filled in; a method's option
    names the methods that read it."""
    meta = field_of(name).metadata
    choices = _choices(meta)
    words = meta["help"].replace("{choices}", ", ".join(choices or ()))
    return words if name in FIELDS else f"{', '.join(owners(name))}: {words}"


def choices_of(name: str) -> Optional[tuple]:
    return _choices(field_of(name).metadata)
