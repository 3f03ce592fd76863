"""Run a :class:`jpanning.config.RunConfig`: screen, train, evaluate, write the results.

    from jpanning import experiment
    from jpanning.config import RunConfig

    config = RunConfig.from_flat({"model": "lenet5", "dataset": "synthetic", "method": "snip",
                                  "ratio": 0.9, "epochs": 1, "out": "/tmp/lenet5-snip"})
    results = experiment.run(config)          # the dict it writes as results.json
    experiment.resume("/tmp/stopped-run")     # continue an interrupted run from its run.json

The run's folder (``config.output.out``) holds what it computes as it goes, so a stopped run
continues (:func:`resume`): ``run.json`` (the config, :meth:`RunConfig.saved`), the
screening (``masks.npz``, ``screen.json``; RL Panning's ``policy.msgpack``, PuRL's plots; the
trained network a method like PuRL prunes, ``pretrained.npz``), training checkpoints
(``checkpoints/``, removed at the end), then ``results.json``, ``model.npz`` and
``density.png``; ``failed.json`` when the method or the recipe fails on the problem
(:class:`jpanning.errors.RunFailed`). A live run holds the folder's lock (``.lock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Any, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from jpanning import checkpoint, data, flops, models, parallel, pruning, report, scores, train
from jpanning import config as config_lib, masks as masks_lib
from jpanning.config import NOT_SAVED, PATH_FIELDS, RESUME_MAY_SET, RUN_FILE, RunConfig
from jpanning.panning import SCORING
from jpanning.errors import JPanningError, RunFailed
from jpanning.methods import METHODS
from jpanning.rundir import SCREEN_FILES, RunDir

SEARCH_CHECKPOINT_EVERY = 200  # agent steps between checkpoints of an RL search by default


@dataclasses.dataclass(frozen=True)
class Screened:
    """What screening produced: the masks, the method's own entries of results.json (RL
    Panning's ``rl``, PuRL's ``purl``, Panning's ``panning``) and the seconds it took.
    ``screen.json`` holds :meth:`record`."""

    masks: Any
    entries: dict
    prune_seconds: float

    def record(self) -> dict:
        return self.entries | {"prune_seconds": self.prune_seconds}


@dataclasses.dataclass(frozen=True)
class Checked:
    """The mask's connectivity and cost (:func:`_check_masks`): its sparsity report, the
    effective sparsity, the layers it emptied and those left off every input-output path
    (bypassed), whether no input reaches the output, and the forward FLOPs."""

    sparsity: dict
    effective: float
    emptied: list
    bypassed: list
    disconnected: bool
    flops: dict


@dataclasses.dataclass(frozen=True)
class Trained:
    """The trained state, its per-epoch history and the seconds it took."""

    state: Any
    history: list
    seconds: float


def interrupted_run(out: str) -> str | None:
    """What a stopped run (not finished, not failed) left in ``out`` for :func:`resume`
    (None: nothing to resume; :meth:`jpanning.rundir.RunDir.interrupted`)."""
    return RunDir(out).interrupted()


def resumed_config(out: str, **changes) -> RunConfig:
    """The config of the run in ``out`` (its run.json), to go on with; ``changes`` may set
    the :data:`jpanning.config.RESUME_MAY_SET` settings (how it goes on, not what it
    computes)."""

    refused = sorted(set(changes) - set(RESUME_MAY_SET))
    if refused:
        raise JPanningError(
            f"resuming takes the run's settings from its {RUN_FILE}; {', '.join(refused)} "
            f"cannot change them (only {', '.join(RESUME_MAY_SET)} may be given)"
        )
    path = os.path.join(out, RUN_FILE)
    if not os.path.isdir(out):
        raise JPanningError(f"--resume {out!r} is not a directory")
    if RunDir(out).ended() == "finished":
        raise JPanningError(f"--resume {out!r}: that run has finished (results.json is there)")
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("it holds no settings")
        missing = sorted(set(RunConfig().saved()) - set(saved) - set(config_lib.option_fields()))
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        flat = {k: v for k, v in saved.items() if k not in NOT_SAVED}
        flat |= {k: v for k, v in changes.items() if k not in NOT_SAVED}
        rest = {k: v for k, v in changes.items() if k in NOT_SAVED and k != "out"}
        given = flat | rest | {"out": out, "resume": out, "overwrite": False}
        return RunConfig.from_flat(given, saved=True)
    except FileNotFoundError:
        raise JPanningError(f"--resume {out!r} holds no run to resume ({RUN_FILE} is missing)")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError and JPanningError too
        raise JPanningError(f"--resume {out!r}: {RUN_FILE} is not readable ({e})")


def resume(out: str, dataset=None, **changes) -> dict:
    """Continue the interrupted run in ``out`` (:func:`resumed_config`, then :func:`run`)."""
    config = resumed_config(out, **changes)
    print(f"resuming the run in {out}")
    return run(config, dataset)


def run(config: RunConfig, dataset=None) -> dict:
    """The whole pipeline for ``config``; returns the results dict it also writes.

    SIGINT and SIGTERM are held for the whole run: the searches and training loops poll them
    after each step and the pipeline between its stages; either way the work so far is saved
    and :class:`jpanning.checkpoint.Interrupted` is raised (a second signal of the same kind
    interrupts at once).

    Args:
        config: the run; ``config.output.resume`` set (:func:`resumed_config`) continues the
            run in that folder.
        dataset: the already loaded data of ``config`` (the benchmark harness loads it once
            for many runs); None loads it here.

    While it lives the run holds its folder's lock (OUT/.lock): another run into OUT is
    refused, and so is a new run into a folder holding a finished run (results.json) without
    ``overwrite`` (removes its results.json and checkpoints/ first), or an interrupted one.
    """

    with checkpoint.StopSignal() as stop, contextlib.ExitStack() as owned:
        config = prepare(config)
        o = config.output
        RunDir(o.out).own(owned, resume=o.resume is not None, overwrite=o.overwrite)
        return _run(config, dataset, stop)


def prepare(config: RunConfig) -> RunConfig:
    """``config`` with its defaults settled (the dataset, the folder, the method's own) and
    the paths it names checked, before any work."""

    d, m = config.data, config.pruning
    if d.data_dir is not None and not os.path.isdir(d.data_dir):
        raise JPanningError(f"--data-dir {d.data_dir!r} does not exist")
    if d.dataset is None:
        dataset, reason = data.resolve_default_dataset(d.data_dir)
        print(f"dataset: {dataset} ({reason})")
        config = config.replace(dataset=dataset)
    if config.output.out is None:
        name = f"{config.model}-{config.data.dataset}-{m.method}-{m.ratio}-seed{config.seed}"
        config = config.replace(out=os.path.join("runs", name))
    for name in ("policy", "pretrained"):
        path = m.option(name)
        if path is not None and not os.path.isfile(path):
            raise JPanningError(f"--{name} {path!r} does not exist")
    method = METHODS[m.method]
    if method.prepare is not None:
        config = method.prepare(config, config.output.resume is not None)
    # options left unset are recorded as what they mean (the authors' budget and scoring)
    for name, meaning in (("preset", pruning.PRESET), ("scoring", SCORING)):
        if name in config_lib.option_fields(m.method) and config.pruning.option(name) is None:
            config = config.replace(**{name: meaning})
    RunDir(config.output.out).check_writable()
    return config


def _check_stop(stop, out: str, where: str) -> None:
    """Raise :class:`jpanning.checkpoint.Interrupted` between stages when a stop is pending."""

    signal_name = stop()
    if signal_name:
        raise checkpoint.Interrupted(
            f"stopped by {signal_name} {where}; continue with --resume {out}", signal_name
        )


# ---------------------------------------------------------------------------------------------
# The problem a run prunes


@dataclasses.dataclass(frozen=True)
class Setup:
    """The network and the scoring batch of ``run.py --model M --seed S``.

    Attributes:
        model: the Flax module.
        variables: ``{'params', 'batch_stats'}`` at initialization.
        prunable: the prunable set (:func:`jpanning.masks.prunable_tree`).
        batch: the scoring batch, ``samples_per_class`` examples of each class.
        prune_key, train_key: the keys of screening and of training.
    """

    model: Any
    variables: dict
    prunable: Any
    batch: tuple
    prune_key: Any
    train_key: Any


def setup(config: RunConfig, dataset, mesh=None) -> Setup:
    """The model at its seeded initialization and the scoring batch (split over ``mesh``'s
    devices when it divides evenly)."""

    init_key, prune_key, train_key = jax.random.split(jax.random.key(config.seed), 3)
    model = models.create_model(config.model, dataset.num_classes)
    variables = models.init_variables(model, init_key, dataset.input_shape)
    batch = data.scoring_batch(dataset, config.data.samples_per_class, seed=config.seed)
    if mesh is not None and len(batch[1]) % mesh.size == 0:
        batch = parallel.put_batch(mesh, batch)  # the scorers' batch split over the devices
    return Setup(
        model=model,
        variables=variables,
        prunable=masks_lib.prunable_tree(variables["params"]),
        batch=batch,
        prune_key=prune_key,
        train_key=train_key,
    )


def prune_problem(config: RunConfig, problem_setup: Setup, variables: Optional[dict] = None):
    """The :class:`jpanning.pruning.PruneProblem` of the run (``variables``: the network to
    prune, default the initialization)."""

    m = config.pruning
    return pruning.PruneProblem(
        model=problem_setup.model,
        variables=problem_setup.variables if variables is None else variables,
        batch=problem_setup.batch,
        sparsity=m.ratio if METHODS[m.method].prunes else 0.0,
        prunable=problem_setup.prunable,
        key=problem_setup.prune_key,
        scope=m.scope,
        options=m.options,
        samples_per_class=config.data.samples_per_class,
    )


# ---------------------------------------------------------------------------------------------
# The stages


def _run(config: RunConfig, dataset, stop) -> dict:

    out = config.output.out
    dataset = _load_data(config, dataset)
    mesh = _mesh(config)
    problem_setup = setup(config, dataset, mesh)
    if config.output.resume is None:
        config = _record(config)
    try:
        variables, train_key, pretrained = problem_setup.variables, problem_setup.train_key, None
        if METHODS[config.pruning.method].trained:
            variables, pretrained = _pretrained(config, problem_setup, dataset, mesh, stop)
            _check_stop(stop, out, "after the dense pretraining (pretrained.npz saved)")
            # the pretraining used train_key (as a dense run with this seed does)
            train_key = _fold(train_key)
        problem = prune_problem(config, problem_setup, variables)
        screened = _screen(config, problem, dataset, stop)
        checked = _check_masks(config, problem, dataset, screened)
        _check_stop(stop, out, "after screening (masks.npz saved)")
        start = time.perf_counter()
        state, history = _train(
            config, "train", problem.model, variables, dataset, train_key,
            screened.masks if METHODS[config.pruning.method].prunes else None, mesh, stop,
        )  # fmt: skip
        trained = Trained(state, history, time.perf_counter() - start)
        return _results(config, problem, dataset, screened, checked, trained, pretrained)
    except RunFailed as e:  # a result of this run: recorded, so the folder is not "stopped"
        if os.path.isdir(out):
            record = {"error": str(e), "run_id": config.run_id, "disconnected": e.disconnected}
            if e.disconnected:  # the literature reports such a network at chance accuracy
                record["chance_accuracy"] = 1.0 / dataset.num_classes
            report.write_json(os.path.join(out, "failed.json"), record)
        raise


def _fold(key):

    return jax.random.fold_in(key, 1)


def _load_data(config: RunConfig, dataset):
    """The run's dataset (loaded here when not given), announced in one line."""

    d = config.data
    if dataset is None:
        if config.output.no_progress and d.dataset != "synthetic":
            import tensorflow_datasets as tfds

            tfds.disable_progress_bar()  # the one-time dataset preparation has bars of its own
        dataset = data.load_dataset(
            d.dataset,
            d.data_dir,
            train_limit=d.train_limit,
            test_limit=d.test_limit,
            seed=config.seed,
        )
    print(
        f"data: {dataset.name}, {dataset.num_train} train / {dataset.num_test} test, "
        f"{dataset.input_shape}, {dataset.num_classes} classes; {dataset.source}"
    )
    return dataset


def _record(config: RunConfig) -> RunConfig:
    """A new run: its run_id (ties results.json, failed.json, screen.json to it) and its
    paths made absolute, written to run.json."""

    paths = {k: os.path.abspath(v) for k, v in config.saved().items() if k in PATH_FIELDS and v}
    config = config.replace(run_id=uuid.uuid4().hex, **paths)
    RunDir(config.output.out).write_settings(config.saved())
    return config


def train_config(config: RunConfig, epochs: Optional[int] = None):
    """The :class:`jpanning.train.TrainConfig` of the run's recipe."""

    t = config.training
    return train.TrainConfig(
        epochs=epochs or t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
    )


def _train(config: RunConfig, stage: str, model, variables, dataset, key, masks, mesh, stop,
           epochs: Optional[int] = None):  # fmt: skip
    """:func:`jpanning.train.train` checkpointed in OUT/checkpoints/<stage>, stopped by ``stop``."""

    every = config.training.checkpoint_every or 0
    directory = os.path.join(config.output.out, "checkpoints", stage)
    with checkpoint.opened(directory, every, config.output.verbose) as ckpt:
        return train.train(
            model,
            variables,
            dataset,
            train_config(config, epochs),
            key,
            masks=masks,
            progress=not config.output.no_progress,
            mesh=mesh,
            checkpoints=ckpt,
            stop=stop,
        )


def _mesh(config: RunConfig):
    """The device mesh batches are split over; None on a single device (no sharding)."""

    devices = config.training.devices
    n = devices or jax.device_count()
    if n == 1 and devices in (None, 1):
        return None
    mesh = parallel.make_mesh(n)
    print(f"devices: {n} x {jax.devices()[0].platform}, batches split over them")
    return mesh


def _pretrained(config: RunConfig, problem_setup: Setup, dataset, mesh, stop):
    """The trained network a method like PuRL prunes: loaded from ``pretrained`` or trained
    densely here with the run's recipe (``pretrain_epochs``, checkpointed like the main
    training) and saved as pretrained.npz with pretrained.json (reused by :func:`resume`).

    Returns:
        ``(variables, info)``, ``info`` for results.json.
    """

    m, out, variables = config.pruning, config.output.out, problem_setup.variables
    if m.option("pretrained") is not None:
        path = m.option("pretrained")
        return _load_pretrained(path, variables), {"from": path}
    run_dir = RunDir(out)
    saved = run_dir.file("pretrained.npz")
    info = run_dir.stage_record("pretrained.json", config.run_id) if config.output.resume else None
    if info is not None and os.path.isfile(saved):
        print(f"{m.method}: the trained network in {saved} (resumed)")
        return _load_pretrained(saved, variables, "the saved pretrained.npz"), info
    epochs = m.option("pretrain_epochs") or config.training.epochs
    print(f"{m.method} prunes a trained network: dense training for {epochs} epoch(s) first")
    start = time.perf_counter()
    state, history = _train(
        config, "pretrain", problem_setup.model, variables, dataset, problem_setup.train_key,
        None, mesh, stop, epochs=epochs,
    )  # fmt: skip
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    info = {
        "from": None,
        "epochs": epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "seconds": time.perf_counter() - start,
        "file": "pretrained.npz",
    }
    report.save_npz(saved, **variables)
    run_dir.write_record("pretrained.json", info, config.run_id)
    return jax.tree.map(jax.numpy.asarray, variables), info


def _load_pretrained(path: str, variables: dict, what: str | None = None) -> dict:
    """``{'params', 'batch_stats'}`` from a run's model.npz, checked against the model;
    ``what`` names the file in errors (default: the ``--pretrained`` argument)."""

    what = what or f"--pretrained {path!r}"
    try:
        loaded = report.load_npz(path)
    except Exception as e:  # numpy raises several types on a corrupt file
        raise JPanningError(f"{what} is not a model.npz file ({e})")
    for name in ("params", "batch_stats"):
        want = {
            masks_lib.path_str(p): np.shape(x)
            for p, x in jax.tree_util.tree_flatten_with_path(variables[name])[0]
        }
        got = {
            masks_lib.path_str(p): np.shape(x)
            for p, x in jax.tree_util.tree_flatten_with_path(loaded.get(name, {}))[0]
        }
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))
            raise JPanningError(
                f"{what} holds a different network than this --model: "
                f"its {name} differ at {diff[0][0]}"
            )
    return {name: jax.tree.map(jax.numpy.asarray, loaded.get(name, {})) for name in variables}


def _screen(config: RunConfig, problem, dataset, stop) -> Screened:
    """The run's screening: the saved one of a resumed run, or the method's
    (:func:`jpanning.pruning.screen`), saved now (masks.npz, screen.json)."""

    out = config.output.out
    screened = _load_screen(config, problem.params) if config.output.resume else None
    if screened is not None:
        print(f"screening: the masks in {os.path.join(out, 'masks.npz')} (resumed)")
        return screened
    context = pruning.ScreenContext(
        config=config,
        dataset=dataset,
        out=out,
        stop=stop,
        progress=lambda desc, total: _agent_bar(desc, total, config.output.no_progress),
        checkpoints=lambda: _search_checkpoints(config),
    )
    start = time.perf_counter()
    masks, entries = pruning.screen(config.pruning.method, problem, context)
    screened = Screened(masks, entries, time.perf_counter() - start)
    # kept before the checks: a refused mask's search is not lost
    report.save_npz(os.path.join(out, "masks.npz"), masks=masks)
    RunDir(out).write_record("screen.json", screened.record(), config.run_id)
    return screened


def _load_screen(config: RunConfig, params) -> Optional[Screened]:
    """The saved screening of a resumed run, or None when screening had not ended."""

    out = config.output.out
    paths = [os.path.join(out, f) for f in SCREEN_FILES]
    if not all(os.path.isfile(p) for p in paths):
        return None
    try:
        masks = report.load_npz(paths[0])["masks"]
        with open(paths[1]) as f:
            screen = json.load(f)
        if screen.get("run_id") != config.run_id:
            return None  # another run's screening: screen again
        if jax.tree.structure(masks) != jax.tree.structure(params):
            raise ValueError("its masks are not shaped like this model's params")
        masks = jax.tree.map(jax.numpy.asarray, masks)
        for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(params)):
            if np.shape(m) != np.shape(p):
                raise ValueError(f"a mask of shape {np.shape(m)} for params {np.shape(p)}")
    except Exception as e:  # numpy, zipfile and json raise several types on damaged files
        raise JPanningError(
            f"--resume {out!r}: the saved screening (masks.npz, screen.json) is not "
            f"readable ({type(e).__name__}: {e}); delete both to screen again"
        )
    screen.pop("run_id", None)
    prune_seconds = screen.pop("prune_seconds")
    return Screened(masks, screen, prune_seconds)


@contextlib.contextmanager
def _search_checkpoints(config: RunConfig):
    """Checkpoints for an agent's search: OUT/checkpoints/search, every ``checkpoint_every``
    (default SEARCH_CHECKPOINT_EVERY) agent steps and on a signal."""

    every = config.training.checkpoint_every or SEARCH_CHECKPOINT_EVERY
    directory = os.path.join(config.output.out, "checkpoints", "search")
    with checkpoint.opened(directory, every, config.output.verbose) as ckpt:
        yield ckpt


@contextlib.contextmanager
def _agent_bar(desc: str, total: int, disable: bool):
    """A progress bar over an agent's environment steps, with the episodes finished and the
    last return; yields the ``callback(t, metrics)`` the agents' host loops call."""

    bar = tqdm(total=total, desc=desc, unit="step", disable=disable)
    returns = []

    def progress(t, metrics):
        bar.update(len(metrics["reward"]))
        returns.extend(metrics["episode_return"][metrics["done"]])
        if returns:
            bar.set_postfix(episodes=len(returns), ret=f"{returns[-1]:.2f}")

    try:
        yield progress
    finally:
        bar.close()


def _check_masks(config: RunConfig, problem, dataset, screened: Screened) -> Checked:
    """The connectivity rule of the literature: refuse only a mask through which no input
    reaches the output (effective sparsity 1: a layer that every path crosses, such as the
    stem, the classifier or any layer of a chain, is empty) unless ``allow_collapsed``; train
    every other mask, naming the layers it empties or leaves off every path (a ResNet routes
    around them through its shortcuts). Returns its sparsity, effective sparsity, emptied and
    bypassed layers and FLOPs."""
    masks = screened.masks

    m, input_shape = config.pruning, dataset.input_shape
    sparsity = masks_lib.sparsity_report(masks, problem.prunable)
    emptied = masks_lib.empty_layers(masks, problem.prunable)
    variables = problem.variables
    eval_apply = models.make_apply_fn(problem.model, variables["batch_stats"], train=False)
    prunable = problem.prunable
    # one jitted pass gives both the effective sparsity and the layers off every path
    alive = jax.jit(
        lambda m: scores.effective_masks(eval_apply, m, input_shape, prunable=prunable)
    )(masks)
    flat, _ = jax.tree_util.tree_flatten_with_path(alive)
    layers = [
        (masks_lib.path_str(path), np.asarray(x)) for (path, x), f in
        zip(flat, jax.tree.leaves(prunable)) if f
    ]  # fmt: skip
    total = sum(x.size for _, x in layers)
    effective = 1.0 - sum(int(np.count_nonzero(x)) for _, x in layers) / total
    bypassed = [name for name, x in layers if not np.any(x)]
    forward = flops.forward_flops(problem.model, variables, masks, prunable, input_shape)
    print(
        f"pruned with {m.method} in {screened.prune_seconds:.2f}s: kept {sparsity['kept']:,} "
        f"of {sparsity['total']:,} prunable weights "
        f"(sparsity {sparsity['sparsity']:.4f}, effective {effective:.4f}); "
        f"forward FLOPs {forward['fraction']:.4f} of dense"
    )
    disconnected = effective >= 1.0
    if disconnected:
        where = ", ".join(emptied or bypassed)
        message = (
            f"method {m.method!r} at ratio {m.ratio} left no input-output path (effective "
            f"sparsity 1): every path crosses an emptied layer ({where}); the network is "
            "disconnected"
        )
        if not config.training.allow_collapsed:
            raise RunFailed(
                f"{message}; lower --ratio, or train it anyway (it can only learn its biases) "
                f"with --resume {config.output.out} --allow-collapsed",
                disconnected=True,
            )
        print(f"warning: {message}; training it (--allow-collapsed)")
    elif bypassed:
        only_cut = [name for name in bypassed if name not in emptied]
        parts = [f"emptied {', '.join(emptied)}"] if emptied else []
        parts += [f"left off every path {', '.join(only_cut)}"] if only_cut else []
        print(
            f"note: the mask {'; '.join(parts)}; the network routes around "
            f"{'it' if len(bypassed) == 1 else 'them'} (effective sparsity {effective:.4f}, "
            f"forward FLOPs {forward['fraction']:.4f} of dense): training it"
        )
    return Checked(sparsity, effective, emptied, bypassed, disconnected, forward)


def _results(config: RunConfig, problem, dataset, screened: Screened, checked: Checked,
             trained: Trained, pretrained: Optional[dict]) -> dict:  # fmt: skip
    """Write results.json, model.npz and density.png; remove the checkpoints; print the
    summary. Returns the results."""

    out, state, sparsity = config.output.out, trained.state, checked.sparsity
    final = trained.history[-1]
    nonzero = masks_lib.sparsity_report(
        jax.tree.map(lambda p: (p != 0).astype(np.float32), state.params), problem.prunable
    )
    results = {
        "config": config.flat() | {"train": dataclasses.asdict(train_config(config))},
        **report.environment(),
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "num_train": dataset.num_train,
            "num_test": dataset.num_test,
            "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes,
        },
        "model": {
            "name": config.model,
            "params": models.count_params(problem.variables["params"]),
            "prunable": sparsity["total"],
        },
        "sparsity": sparsity,
        "effective_sparsity": checked.effective,
        "emptied_layers": checked.emptied,
        "bypassed_layers": checked.bypassed,
        "collapsed_layers": checked.bypassed,  # the name before emptied/bypassed
        "disconnected": checked.disconnected,
        "flops": checked.flops,
        "nonzero_after_training": {"kept": nonzero["kept"], "sparsity": nonzero["sparsity"]},
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "prune_seconds": screened.prune_seconds,
        "train_seconds": trained.seconds,
        "history": trained.history,
        "files": {"masks_and_params": "model.npz", "density_plot": "density.png"},
    }
    if pretrained is not None:
        results["pretrained"] = pretrained
        if pretrained.get("file"):
            results["files"]["pretrained"] = pretrained["file"]
    for name, record in screened.entries.items():  # the method's own entries and their files
        if isinstance(record, dict):
            results[name] = record
            results["files"] |= {k: v for k, v in record.get("files", {}).items() if v}
    report.save_npz(
        os.path.join(out, "model.npz"),
        masks=screened.masks,
        params=state.params,
        batch_stats=state.batch_stats,
    )
    report.plot_layer_density(
        sparsity,
        os.path.join(out, "density.png"),
        f"{config.model} / {dataset.name} / {config.pruning.method} "
        f"(sparsity {sparsity['sparsity']:.4f})",
    )
    report.write_json(os.path.join(out, "results.json"), results)
    if parallel.is_primary():  # results are in; checkpoints are no longer needed
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    print(_summary(config, dataset, results))
    return results


def _summary(config: RunConfig, dataset, results: dict) -> str:
    """The table a run prints at its end."""

    sparsity, forward = results["sparsity"], results["flops"]
    return report.summary_table(
        [
            ("model", f"{config.model} ({results['model']['params']:,} params)"),
            ("dataset", f"{dataset.name} ({dataset.num_train} train / {dataset.num_test} test)"),
            ("method", f"{config.pruning.method} ({config.pruning.scope})"),
            (
                "sparsity",
                f"{sparsity['sparsity']:.6f} (kept {sparsity['kept']:,} / {sparsity['total']:,})",
            ),
            ("effective sparsity", f"{results['effective_sparsity']:.6f}"),
            (
                "forward FLOPs",
                f"{forward['remaining'] / 1e6:,.2f} M of {forward['dense'] / 1e6:,.2f} M "
                f"per image ({forward['fraction']:.4f})",
            ),
            ("test accuracy", f"{results['test_accuracy']:.4f}"),
            ("prune time", f"{results['prune_seconds']:.2f} s"),
            (
                "train time",
                f"{results['train_seconds']:.1f} s ({config.training.epochs} epochs)",
            ),
            ("results", os.path.join(config.output.out, "results.json")),
        ]
    )
