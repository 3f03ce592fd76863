"""Pruning methods: a registry mapping ``run.py --method NAME`` to a function returning masks.

A method is ``method(problem: PruneProblem) -> masks``: everything it may need (the model, its
initial variables, a scoring batch, the target sparsity, the prunable set, a key) comes in
one :class:`PruneProblem`. Its registry entry (:class:`Method`) says what a run of it needs
beyond that (a trained network, presets, the options it reads, a screening step of its own),
so adding a method touches its own module and never the CLI. Register your own with
``register_method('name', fn)``.

This module is the registry and the methods at initialization; it knows no other method.
RL Panning and PuRL register themselves in their modules; :mod:`jpanning.methods` imports
them all.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jpanning import masks as masks_lib, models, panning as panning_lib, scores
from jpanning.errors import JPanningError
from jpanning.options import number, option, shared, weights as fusion_weights


@dataclasses.dataclass(frozen=True)
class PruneProblem:
    """What a pruning method is given.

    Attributes:
        model: the Flax module.
        variables: ``{'params', 'batch_stats'}`` at initialization.
        batch: the scoring batch ``(images, labels)`` (see ``jpanning.data.scoring_batch``).
        sparsity: fraction of prunable weights to remove, in (0, 1).
        prunable: pytree of bools from ``jpanning.masks.prunable_tree``.
        key: PRNG key for methods that draw random numbers.
        scope: 'global' (one ranking over all layers) or 'layer' (same sparsity per layer).
        options: the method's options (its :attr:`Method.options` dataclass, e.g.
            :class:`PanningOptions`; None: its defaults). A dict of option names is taken too
            (:func:`options_of`): options of other methods in it are ignored, so one problem
            serves several methods.
        data: data beyond the scoring batch, for the methods that take it (Panning's and RL
            Panning's scoring batches, PuRL's retraining and evaluation examples).
        samples_per_class: examples of each class in a scoring batch (RL Panning's fresh
            batches are drawn as large).
    """

    model: nn.Module
    variables: dict
    batch: tuple
    sparsity: float
    prunable: Any
    key: jax.Array
    scope: str = "global"
    options: Any = None
    data: Any = None
    samples_per_class: int = 10

    @property
    def params(self):
        return self.variables["params"]


@dataclasses.dataclass(frozen=True)
class ScreenContext:
    """What a run gives a method's own screening step (:attr:`Method.screen`) beyond the
    problem. Built by :mod:`jpanning.experiment`.

    Attributes:
        config: the run's :class:`jpanning.config.RunConfig`.
        dataset: the run's :class:`jpanning.data.Dataset`.
        out: the run's folder, for the method's own files (a policy, plots).
        stop: ``stop() -> signal name or None`` (:class:`jpanning.checkpoint.StopSignal`).
        progress: ``progress(desc, total)``, a context manager yielding the
            ``callback(t, metrics)`` an agent's host loop calls (a progress bar).
        checkpoints: ``checkpoints()``, a context manager yielding the search's checkpoints
            (:func:`jpanning.checkpoint.opened`).
    """

    config: Any
    dataset: Any
    out: str
    stop: Callable
    progress: Callable
    checkpoints: Callable


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry: a pruning method and what a run of it needs.

    Attributes:
        name: its ``run.py --method`` name.
        fn: ``fn(problem) -> masks``.
        prunes: False for the dense baseline (sparsity 0, trained without masks).
        trained: it prunes a trained network: a run trains it first, densely with the
            run's recipe (``--pretrain-epochs``), or loads ``--pretrained``.
        presets: the ``--preset`` names it takes (an agent's search budget).
        options: its options dataclass (frozen; each field a ``run.py`` option made with
            :func:`jpanning.options.option`, or :func:`jpanning.options.shared` for one that
            other methods read too). A run's ``config.pruning.options`` is an instance, and
            so is ``problem.options`` when the method runs; a run refuses another method's
            option.
        prepare: ``prepare(config, resumed) -> config``: settles its defaults before the
            run is recorded in run.json (RL Panning picks its policy); None: nothing.
        screen: ``screen(problem, context: ScreenContext) -> (masks, record)``, for a method
            that needs more than ``fn(problem)`` (data beyond the scoring batch, an agent's
            search with progress and checkpoints, files in the run's folder); ``record`` is
            what results.json keeps of it (its entries' ``files`` are listed there too).
            None: ``(fn(problem), {})``.
    """

    name: str
    fn: Callable[[PruneProblem], Any]
    prunes: bool = True
    trained: bool = False
    presets: tuple[str, ...] = ()
    options: type = None  # NoOptions, set below (defined after the registry's types)
    prepare: Optional[Callable] = None
    screen: Optional[Callable] = None

    def __post_init__(self):
        if self.options is None:
            object.__setattr__(self, "options", NoOptions)

    def __call__(self, problem: PruneProblem):
        return self.fn(problem)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method that reads none beyond the common ones."""


def options_of(problem: PruneProblem, cls: type):
    """``problem.options`` as an instance of the method's options dataclass ``cls``
    (:func:`as_options`)."""
    return as_options(problem.options, cls)


def as_options(given, cls: type):
    """``given`` as an instance of the options dataclass ``cls``: None gives its defaults; a
    dict, or another method's options, gives the fields ``cls`` has (the others are ignored:
    one problem serves several methods; a run refuses another method's option earlier,
    :meth:`jpanning.config.RunConfig.from_flat`)."""
    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if dataclasses.is_dataclass(given):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
    elif not isinstance(given, dict):
        raise JPanningError(f"problem.options must be a {cls.__name__} or a dict, not {given!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in given.items() if k in names})


METHODS: dict[str, Method] = {}


def register_method(name: str, fn: Callable | None = None, **needs):
    """Register ``fn`` under ``name``, with the :class:`Method` fields ``needs``; usable as a
    decorator ``@register_method('x', trained=True)``."""
    if fn is None:
        return functools.partial(register_method, name, **needs)
    METHODS[name] = Method(name, fn, **needs)
    return fn


def prune(name: str, problem: PruneProblem):
    """Run method ``name`` and return its masks (computed, on the host side of ``jit``)."""
    if name not in METHODS:
        raise JPanningError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return jax.block_until_ready(METHODS[name].fn(problem))


def screen(name: str, problem: PruneProblem, context: ScreenContext):
    """Method ``name``'s screening in a run: ``(masks, record)`` (see :attr:`Method.screen`)."""
    method = METHODS[name]
    if method.screen is None:
        return prune(name, problem), {}
    return method.screen(problem, context)


def masks_from_scores(scores, problem: PruneProblem):
    """Top-k masks of a score pytree at the problem's sparsity and scope (jitted once)."""
    select = jax.jit(
        functools.partial(masks_lib.topk, prunable=problem.prunable, scope=problem.scope)
    )
    return select(scores, problem.sparsity)


@register_method("dense", prunes=False)
def dense(problem: PruneProblem):
    """No pruning: the all-ones mask (the dense baseline, trained with the same recipe)."""
    return masks_lib.ones_like(problem.params)


@register_method("random")
def random(problem: PruneProblem):
    """Uniformly random masks: i.i.d. uniform scores, then the exact top-k."""
    return masks_from_scores(scores.random(None, problem.params, None, key=problem.key), problem)


@register_method("magnitude")
def magnitude(problem: PruneProblem):
    """Keep the largest |θ| at initialization."""
    return masks_from_scores(scores.magnitude(None, problem.params, None), problem)


# ----------------------------------------------------------------------------------------------
# Data and data-free scores, single-shot and iterative.


def train_apply_fn(problem: PruneProblem):
    """``apply_fn`` with BatchNorm on the scoring batch's own statistics (SNIP, GraSP)."""
    return models.make_apply_fn(problem.model, problem.variables["batch_stats"], train=True)


def eval_apply_fn(problem: PruneProblem):
    """``apply_fn`` with BatchNorm on its running statistics (SynFlow's all-ones input)."""
    return models.make_apply_fn(problem.model, problem.variables["batch_stats"], train=False)


def iterative_masks(score_fn, problem: PruneProblem, rounds: int, *, keep_pruned: bool):
    """Prune over ``rounds`` rounds of the exponential schedule, rescoring each round.

    Args:
        score_fn: pure ``score_fn(params, masks) -> scores`` (higher is kept).
        problem: the pruning problem (its sparsity, scope and prunable set are used).
        rounds: T, the number of rounds.
        keep_pruned: True: a weight pruned in one round stays pruned (its score is -inf);
            False: every weight competes every round, so pruned weights can come back.
    Returns:
        The final masks, at exactly ``problem.sparsity``.

    Each round is one jitted call (compiled once: the round's sparsity is traced, the top-k
    count is computed inside the graph) and the rounds run in a host loop with the masks kept
    on the device, so a round's progress can be reported. A ``lax.scan`` over the rounds
    costs the same with jpanning's models (``python -m benchmarks.archive.scan_vs_loop``), but many
    times more on XLA:CPU for a model whose convolutions are plain ``lax.conv_general_dilated``
    (their gradients lose XLA's fast layout in a loop body: ``python -m
    benchmarks.archive.loop_body_conv``; see ``jpanning.cpu``).
    """
    select = functools.partial(masks_lib.topk, prunable=problem.prunable, scope=problem.scope)

    @jax.jit
    def one_round(params, masks, sparsity):  # params are arguments, not baked-in constants
        s = score_fn(params, masks)
        if keep_pruned:
            s = jax.tree.map(lambda x, m: jnp.where(m != 0, x, -jnp.inf), s, masks)
        return select(s, sparsity)

    masks = masks_lib.ones_like(problem.params)
    for sparsity in masks_lib.exponential_schedule(problem.sparsity, rounds):
        masks = one_round(problem.params, masks, sparsity)
    return masks


ROUNDS = 100  # T of SynFlow, iterative SNIP and FORCE when not given (Panning: its config's)
PRESET = "paper"  # the search budget when not given: the authors'


def preset(presets: dict, method: str, name: Optional[str]):
    """The entry of a method's ``presets`` named ``name`` (:data:`PRESET` when None), or a
    one-line error listing the names."""
    name = name or PRESET
    if name not in presets:
        raise JPanningError(f"unknown {method} preset {name!r}; choose from {', '.join(presets)}")
    return presets[name]


def temperature(problem: PruneProblem) -> float:
    """The problem's ``temperature`` option (GraSP's 200, :data:`jpanning.scores.TEMPERATURE`,
    unless given)."""
    return float(options_of(problem, GraSPOptions).temperature or scores.TEMPERATURE)


@dataclasses.dataclass(frozen=True)
class SNIPOptions:
    chunk_size: Optional[int] = shared("chunk_size")


@dataclasses.dataclass(frozen=True)
class GraSPOptions:
    temperature: float = shared("temperature")
    chunk_size: Optional[int] = shared("chunk_size")


@dataclasses.dataclass(frozen=True)
class SynFlowOptions:
    rounds: Optional[int] = shared("rounds")


@dataclasses.dataclass(frozen=True)
class IterativeSNIPOptions:
    rounds: Optional[int] = shared("rounds")
    chunk_size: Optional[int] = shared("chunk_size")


@register_method("snip", options=SNIPOptions)
def snip(problem: PruneProblem):
    """SNIP (Lee et al. 2019): keep the largest |θ ⊙ ∂L/∂θ| on the scoring batch, one shot."""
    chunk = options_of(problem, SNIPOptions).chunk_size
    score = functools.partial(scores.snip, train_apply_fn(problem), chunk_size=chunk)
    return masks_from_scores(jax.jit(score)(problem.params, problem.batch), problem)


@register_method("grasp", options=GraSPOptions)
def grasp(problem: PruneProblem):
    """GraSP (Wang et al. 2020): keep the largest θ ⊙ Hg (gradient-flow preserving), one shot.

    The loss is taken at logits / 200 as in GraSP's code (:func:`temperature`).
    """
    options = options_of(problem, GraSPOptions)
    score = functools.partial(
        scores.grasp,
        train_apply_fn(problem),
        loss_fn=functools.partial(scores.cross_entropy, temperature=temperature(problem)),
        prunable=problem.prunable,
        chunk_size=options.chunk_size,
    )
    return masks_from_scores(jax.jit(score)(problem.params, problem.batch), problem)


@register_method("synflow", options=SynFlowOptions)
def synflow(problem: PruneProblem):
    """SynFlow (Tanaka et al. 2020): data-free, iterative, T=100 rounds by default.

    Each round scores the masked |θ|-network and prunes to the next sparsity of the
    exponential schedule; pruned weights score −inf, so they stay pruned (the paper multiplies
    the scores by the mask: the same masks except among tied zeros). ``rounds=1`` is
    single-shot SynFlow.
    """
    apply_fn = eval_apply_fn(problem)

    def score_fn(params, masks):
        return scores.synflow(
            apply_fn, params, problem.batch, masks=masks, prunable=problem.prunable
        )

    rounds = options_of(problem, SynFlowOptions).rounds or ROUNDS
    return iterative_masks(score_fn, problem, rounds, keep_pruned=True)


def _snip_rounds(problem: PruneProblem, *, keep_pruned: bool):
    """SNIP rescored at the pruned network each round."""
    options = options_of(problem, IterativeSNIPOptions)
    apply_fn, chunk = train_apply_fn(problem), options.chunk_size

    def score_fn(params, masks):
        return scores.snip(apply_fn, params, problem.batch, masks=masks, chunk_size=chunk)

    rounds = options.rounds or ROUNDS
    return iterative_masks(score_fn, problem, rounds, keep_pruned=keep_pruned)


@register_method("iter_snip", options=IterativeSNIPOptions)
def iter_snip(problem: PruneProblem):
    """Iterative SNIP (de Jorge et al. 2021): SNIP rescored at the pruned network each round;
    pruned weights stay pruned. T=100 rounds by default."""
    return _snip_rounds(problem, keep_pruned=True)


@register_method("force", options=IterativeSNIPOptions)
def force(problem: PruneProblem):
    """FORCE (de Jorge et al. 2021): like ``iter_snip`` but every weight competes each round.

    The gradient is taken at the currently pruned network ``θ ⊙ m`` and every weight, kept or
    pruned, is scored by ``|θ ⊙ ∂L/∂w|`` (the derivative with respect to its mask entry), so
    a weight pruned in one round can come back in the next. T=100 rounds by default.
    """
    return _snip_rounds(problem, keep_pruned=False)


def _panning_screen(problem: PruneProblem, context: ScreenContext):
    """Panning in a run: T fresh scoring batches (``--scoring fresh``, the authors'), or a
    pool of ``--pool-size`` cycled through; the rounds the collapse shield took over are
    counted in the log and in results.json's ``panning`` entry."""
    run, options = context.config, options_of(problem, PanningOptions)
    fresh = (options.scoring or panning_lib.SCORING) == "fresh"
    count = options.config().rounds if fresh else (options.pool_size or 1)
    data = panning_lib.score_pool(context.dataset, run.data.samples_per_class, count, run.seed)
    masks, trace = _panning(dataclasses.replace(problem, data=data))
    record = shield_record(np.asarray(trace["shielded"]), options.collapse_shield)
    print(f"panning: {record['summary']}")
    return masks, {"panning": record}


def shield_record(shielded: np.ndarray, setting: Optional[str]) -> dict:
    """The collapse shield's entry of results.json: the setting, the rounds (1-based) it
    took over, and a one-line summary for the log."""
    setting = setting or ("synflow" if shield_on(None) else "off")
    rounds = [int(t) + 1 for t in np.flatnonzero(shielded)]
    if setting == "off":
        summary = "collapse shield off (the authors' method)"
    elif rounds:
        summary = (
            f"the collapse shield took SynFlow's mask in {len(rounds)} of "
            f"{len(shielded)} rounds (between rounds {rounds[0]} and {rounds[-1]}), where the fused "
            "weights would have emptied a layer"
        )
    else:
        summary = f"the collapse shield was not needed in any of {len(shielded)} rounds"
    return {
        "collapse_shield": setting,
        "shielded_rounds": len(rounds),
        "shielded_at": rounds,
        "rounds": int(len(shielded)),
        "summary": summary,
    }


def shield_on(setting: Optional[str]) -> bool:
    """Whether the collapse shield setting ``'synflow'`` or ``'off'`` turns it on; None: the
    library's default (:class:`jpanning.panning.PanningConfig`)."""
    if setting is None:
        return panning_lib.PanningConfig().collapse_shield
    if setting not in SHIELDS:
        raise JPanningError(
            f"unknown collapse_shield {setting!r}; choose from: {', '.join(SHIELDS)}"
        )
    return setting == "synflow"


SHIELDS = ("synflow", "off")


@dataclasses.dataclass(frozen=True)
class PanningOptions:
    """Panning's options (``run.py --method panning``); None: the authors' setting
    (:class:`jpanning.panning.PanningConfig`)."""

    rounds: Optional[int] = shared("rounds")
    temperature: float = shared("temperature")
    panning_thresholds: Optional[tuple[float, ...]] = option(
        None,
        "sparsity bounds of the hand schedule's bands (default 0.8 0.9 0.98 0.99)",
        parse=number(float),
        nargs="+",
        metavar="S",
    )
    panning_weights: Optional[tuple[tuple[float, float, float], ...]] = option(
        None,
        "fusion weights per band, one more than thresholds "
        "(default .2,.5,.3 .2,.4,.4 .2,.3,.5 .4,.2,.4 .5,0,.5)",
        parse=fusion_weights,
        nargs="+",
        metavar="SYN,SNIP,GRASP",
    )
    chunk_size: Optional[int] = shared("chunk_size")
    scoring: Optional[str] = shared("scoring")
    pool_size: Optional[int] = shared("pool_size")
    fusion: str = shared("fusion")
    collapse_shield: str = shared("collapse_shield")

    def config(self) -> panning_lib.PanningConfig:
        """The algorithm's settings: these options over the authors' defaults."""
        defaults = panning_lib.PanningConfig()
        w = self.panning_weights
        return panning_lib.PanningConfig(
            rounds=int(self.rounds or defaults.rounds),
            temperature=float(self.temperature or scores.TEMPERATURE),
            thresholds=tuple(self.panning_thresholds or defaults.thresholds),
            weights=tuple(map(tuple, w)) if w else None,
            fusion=self.fusion or defaults.fusion,
            collapse_shield=shield_on(self.collapse_shield),
        )


@register_method("panning", options=PanningOptions, screen=_panning_screen)
def panning(problem: PruneProblem):
    """Neural Network Panning with the authors' hand staircase (:mod:`jpanning.panning`).

    T=100 rounds by default (``rounds``); SNIP and GraSP of the dense network at
    ``temperature`` (200) on ``problem.data`` (``(inputs [P, B, ...], labels [P, B])``,
    round t scoring on batch ``t mod P``: T fresh batches are the authors'; default the
    scoring batch alone), SynFlow of the masked network every round; pruned weights may come
    back in any round. ``fusion`` (``'add'``/``'mul'``), ``panning_thresholds`` and
    ``panning_weights`` replace the staircase; ``collapse_shield`` (``'synflow'``, the
    default, or ``'off'``, the authors') sets the collapse shield (:class:`PanningOptions`).
    """
    return _panning(problem)[0]


def _panning(problem: PruneProblem):
    """:func:`panning`'s masks and its per-round trace."""
    options = options_of(problem, PanningOptions)
    config = options.config()
    masks, trace = panning_lib.panning(
        train_apply_fn(problem),
        eval_apply_fn(problem),
        problem.params,
        problem.batch,
        problem.sparsity,
        prunable=problem.prunable,
        config=config,
        scope=problem.scope,
        chunk_size=options.chunk_size,
        batches=problem.data,
    )
    return jax.block_until_ready(masks), trace
