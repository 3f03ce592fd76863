"""A run's settings as one frozen, typed dataclass: :class:`RunConfig`.

Every ``run.py`` option is a field of one of its parts (:class:`DataConfig`,
:class:`PruningConfig`, :class:`TrainingConfig`, :class:`OutputConfig`), with its help text
and its parser next to it (``metadata``), so the command line is built from these fields
(:mod:`jpanning.cli`) and a run from Python needs no command line (:mod:`jpanning.experiment`).

Field names are unique across the parts and equal the options' names (``--pool-size`` is
``pool_size``), so a config is also a flat dict: :meth:`RunConfig.flat` and
:meth:`RunConfig.from_flat` are what a run folder's ``run.json`` holds and is read from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from jpanning.errors import JPanningError
from jpanning.scores import TEMPERATURE

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


def _models():
    from jpanning.models import MODELS

    return tuple(MODELS)


def _methods():
    from jpanning.methods import METHODS

    return tuple(METHODS)


def option(default, help: str = "", *, parse: Callable = text, choices=None, metavar=None,
           nargs=None, only: bool = False):  # fmt: skip
    """A field that is also a ``run.py`` option.

    Args:
        default: the field's default (the option's).
        help: the option's help text.
        parse: text or value to a checked value (raises ValueError with a one-line message).
        choices: the allowed values, or a function returning them (the registries).
        metavar, nargs: as for ``argparse``; ``nargs='+'`` fields hold tuples.
        only: the option is for the methods whose registry entry lists it
            (:attr:`jpanning.pruning.Method.options`); others refuse it.
    """
    meta = dict(help=help, parse=parse, choices=choices, metavar=metavar, nargs=nargs, only=only)
    return dataclasses.field(default=default, metadata=meta)


def flag(help: str, *, only: bool = False):
    """A boolean option, off unless given (``action='store_true'``)."""
    return dataclasses.field(default=False, metadata=dict(help=help, flag=True, only=only))


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
    """The pruning method and its settings (each method's help says which it reads)."""

    ratio: float = option(
        0.95, "sparsity: fraction of prunable weights removed, in (0, 1)", parse=ratio
    )
    method: str = option(
        "rlpanning", "pruning method: {choices}", choices=_methods, metavar="METHOD"
    )
    scope: str = option(
        "global", "rank weights over all layers together or per layer", choices=("global", "layer")
    )
    rounds: Optional[int] = option(
        None,
        "rounds of the iterative methods (synflow, iter_snip, force, panning; default 100)",
        parse=positive(int),
    )
    temperature: float = option(
        TEMPERATURE,
        "GraSP and Panning take SNIP/GraSP at logits / temperature",
        parse=positive(float),
    )
    panning_thresholds: Optional[tuple[float, ...]] = option(
        None,
        "panning: sparsity bounds of the hand schedule's bands (default 0.8 0.9 0.98 0.99)",
        parse=number(float),
        nargs="+",
        metavar="S",
    )
    panning_weights: Optional[tuple[tuple[float, float, float], ...]] = option(
        None,
        "panning: fusion weights per band, one more than thresholds "
        "(default .2,.5,.3 .2,.4,.4 .2,.3,.5 .4,.2,.4 .5,0,.5)",
        parse=weights,
        nargs="+",
        metavar="SYN,SNIP,GRASP",
    )
    chunk_size: Optional[int] = option(
        None,
        "score the scoring batch in chunks of this many examples (bounded memory; "
        "train-mode BatchNorm then normalises each chunk by its own statistics)",
        parse=positive(int),
    )
    preset: Optional[str] = option(
        None,
        "rlpanning and purl: search budget (for rlpanning it implies --search); paper, "
        "the default: the authors' (rlpanning: 50k agent "
        "steps, T=100, 256-256 MLPs; purl: 55 episodes, 1,000 retraining images per layer); "
        "quick: minutes on a CPU (rlpanning: 200 steps, T=20, 64-64 MLPs; purl: 8 episodes, "
        "128 images): a smoke test",
        choices=("paper", "quick"),
    )
    agent_steps: Optional[int] = option(
        None, "rlpanning: TD3 environment steps (default: the preset's)", parse=positive(int)
    )
    scoring: Optional[str] = option(
        None,
        "panning, rlpanning: SNIP/GraSP on a new class-balanced batch every round or "
        "step (fresh; the authors', the default) or on a pool of --pool-size batches scored "
        "once (pool); screening with a policy: default the policy's own",
        choices=("fresh", "pool"),
    )
    pool_size: Optional[int] = option(
        None,
        "--scoring pool: scoring batches in the pool (default: panning 1, rlpanning the preset's)",
        parse=positive(int),
    )
    fusion: str = option(
        "add",
        "panning, rlpanning: fuse the metrics as a weighted sum (add; the authors' "
        "default) or a product of powers (mul; with its own hand staircase)",
        choices=("add", "mul"),
    )
    collapse_shield: str = option(
        "synflow",
        "panning, rlpanning screening: on a round whose fusion weights would empty a prunable "
        "layer, use SynFlow's weights alone for that round (synflow, jpanning's default: "
        "SynFlow avoids layer collapse) or keep the fused mask (off, the authors'); never "
        "inside an RL search, whose collapse penalty is the authors'",
        choices=("synflow", "off"),
    )
    effective: str = option(
        "authors",
        "rlpanning: effective sparsity in the reward; authors: weights alive in the "
        "positive SynFlow network, bias paths included; paths: weights on an input-output path",
        choices=("authors", "paths"),
    )
    reset_observes_sparsity: bool = flag(
        "rlpanning: the first observation carries the first round's sparsity (the "
        "authors' is 0, so the first action does not know the target)"
    )
    critic_loss: Optional[str] = option(
        None,
        "rlpanning search: the TD3 critic's loss; mse: the authors' (the default); huber: "
        "bounded pull of the rare collapse penalty, after which the authors' critic diverged "
        "(docs/policy.md)",
        choices=("mse", "huber"),
    )
    policy: Optional[str] = option(
        None,
        "rlpanning: screen with this saved policy (a run's policy.msgpack), no search "
        "(default: the policy that ships for --model, see --search)",
        metavar="PATH",
        only=True,
    )
    search: bool = flag(
        "rlpanning: train a new policy (TD3, --preset's budget) instead of screening with "
        "the one that ships with jpanning",
        only=True,
    )
    purl_episodes: Optional[int] = option(
        None,
        "purl: DQN training episodes (default: the preset's; paper 55, quick 8)",
        parse=positive(int),
    )
    purl_alpha_step: Optional[float] = option(
        None,
        "purl: spacing of the α grid {0, step, ..., 2.2} (0.2; the paper also uses 0.1)",
        parse=positive(float),
    )
    purl_state: Optional[str] = option(
        None,
        "purl: the agent's state, 2n per-layer accuracies and sparsities (per_layer, the "
        "paper's final choice) or (layer, accuracy, sparsity) (compact, its ablation)",
        choices=("compact", "per_layer"),
    )
    purl_collapse: Optional[float] = option(
        None,
        "purl: end an episode when accuracy falls below FRACTION x the target (off)",
        parse=number(float),
        metavar="FRACTION",
    )
    pretrained: Optional[str] = option(
        None,
        "purl, uniform: prune this trained network (a dense run's model.npz) instead of "
        "training one first",
        metavar="PATH",
        only=True,
    )
    pretrain_epochs: Optional[int] = option(
        None,
        "purl, uniform: epochs of the dense training before pruning (default: --epochs)",
        parse=positive(int),
    )


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


# Fields newer than run.json files that may still be resumed: a run.json without one ran with
# the value given here (the authors' TD3 critic loss before --critic-loss existed; no collapse
# shield before --collapse-shield existed).
ADDED_LATER = {"critic_loss": None, "collapse_shield": "off"}

PARTS = {"data": DataConfig, "pruning": PruningConfig, "training": TrainingConfig,
         "output": OutputConfig}  # fmt: skip
# The options in the order run.py lists them (and run.json holds them).
ORDER = (
    "model", "dataset", "ratio", "method", "scope", "rounds", "temperature",
    "panning_thresholds", "panning_weights", "chunk_size", "preset", "agent_steps", "scoring",
    "pool_size", "fusion", "collapse_shield", "effective", "reset_observes_sparsity",
    "critic_loss", "policy", "search",
    "purl_episodes", "purl_alpha_step", "purl_state", "purl_collapse", "pretrained",
    "pretrain_epochs", "epochs", "batch_size", "lr", "momentum", "weight_decay", "seed",
    "samples_per_class", "train_limit", "test_limit", "data_dir", "out", "resume", "overwrite",
    "verbose", "checkpoint_every", "devices", "allow_collapsed", "no_progress",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: the model, the seed and the four parts.

    ``run_id`` is set when the run starts (:func:`jpanning.experiment.run`); it ties the
    folder's results.json, failed.json and screen.json to this run.
    """

    model: str = option("resnet20", "network: {choices}", choices=_models, metavar="MODEL")
    seed: int = option(0, parse=number(int))
    data: DataConfig = DataConfig()
    pruning: PruningConfig = PruningConfig()
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()
    run_id: Optional[str] = None

    def __post_init__(self):
        for part, cls in PARTS.items():
            if not isinstance(getattr(self, part), cls):
                raise JPanningError(f"RunConfig.{part} must be a {cls.__name__}")
        self.validate()

    @classmethod
    def from_flat(cls, flat: dict) -> RunConfig:
        """The config of a flat dict (run.json, ``vars(args)``); missing keys take defaults.

        Raises:
            JPanningError: a key that is no setting, or a value :meth:`validate` refuses.
        """
        unknown = sorted(set(flat) - set(FIELDS) - {"run_id"})
        if unknown:
            raise JPanningError(f"unknown run setting(s) {', '.join(unknown)}")
        given = {k: _normalise(v) for k, v in flat.items()}
        parts = {
            part: part_cls(**{f.name: given[f.name] for f in _fields(part_cls) if f.name in given})
            for part, part_cls in PARTS.items()
        }
        top = {k: given[k] for k in ("model", "seed", "run_id") if k in given}
        return cls(**top, **parts)

    def flat(self) -> dict:
        """``{option: value}`` in :data:`ORDER`, then ``run_id`` (results.json's ``config``)."""
        out = {}
        for name in ORDER:
            part = FIELDS[name]
            out[name] = getattr(self if part is None else getattr(self, part), name)
        out["run_id"] = self.run_id
        return {k: _jsonable(v) for k, v in out.items()}

    def saved(self) -> dict:
        """What run.json holds: :meth:`flat` without :data:`NOT_SAVED`."""
        return {k: v for k, v in self.flat().items() if k not in NOT_SAVED}

    def replace(self, **changes) -> RunConfig:
        """A copy with the flat settings ``changes`` (``config.replace(ratio=0.9)``)."""
        return RunConfig.from_flat(self.flat() | changes)

    def validate(self) -> RunConfig:
        """Check every setting; returns self.

        Raises:
            JPanningError: one line naming the bad setting, its value and what is allowed.
        """
        for name, part in FIELDS.items():
            obj = self if part is None else getattr(self, part)
            check_value(name, getattr(obj, name))
        for name, part in FIELDS.items():
            field = FIELD_OF[name]
            if field.metadata.get("only"):
                obj = self if part is None else getattr(self, part)
                if getattr(obj, name) != field.default:
                    _check_applies(name, self.pruning.method)
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


def check_value(name: str, value) -> Any:
    """``value`` for setting ``name`` checked (and parsed, if text); a one-line error else."""
    meta = FIELD_OF[name].metadata
    default = FIELD_OF[name].default
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


def _check_applies(name: str, method: str) -> None:
    """Refuse an option for a method whose registry entry does not list it."""
    from jpanning.methods import METHODS

    if method in METHODS and name in METHODS[method].options:
        return
    owners = [m for m, entry in METHODS.items() if name in entry.options]
    flag_name = "--" + name.replace("_", "-")
    if len(owners) == 1:
        who = f"--method {owners[0]}"
    elif owners and all(METHODS[m].trained for m in owners):
        who = f"the methods that prune a trained network ({', '.join(owners)})"
    else:
        who = f"the methods {', '.join(owners)}"
    raise JPanningError(f"{flag_name} is for {who}, not {method!r}")


# Where each option lives: FIELDS[name] is the part's attribute (None: RunConfig's own).
FIELDS: dict[str, Optional[str]] = {}
FIELD_OF: dict[str, dataclasses.Field] = {}
for _f in _fields(RunConfig):
    if _f.name in ("model", "seed"):
        FIELDS[_f.name], FIELD_OF[_f.name] = None, _f
for _part, _cls in PARTS.items():
    for _f in _fields(_cls):
        FIELDS[_f.name], FIELD_OF[_f.name] = _part, _f
assert set(FIELDS) == set(ORDER), set(FIELDS) ^ set(ORDER)
FIELDS = {name: FIELDS[name] for name in ORDER}


def help_of(name: str) -> str:
    """The help text of option ``name``, with its choices filled in."""
    meta = FIELD_OF[name].metadata
    choices = _choices(meta)
    return meta["help"].replace("{choices}", ", ".join(choices or ()))


def choices_of(name: str) -> Optional[tuple]:
    return _choices(FIELD_OF[name].metadata)
