"""The command line: ``python run.py --model resnet20 --ratio 0.95`` prunes, trains and tests.

This is the imperative shell: it parses and checks arguments, loads data, calls the library
(pruning, training, evaluation) and writes results. It does no maths of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import time

from jpanning.errors import JPanningError, RunFailed

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "synthetic")
TRAINED_METHODS = ("purl", "uniform")  # they prune a trained network, so run.py trains it first


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction in (0, 1)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{value} is outside (0, 1): it is the fraction of prunable weights removed"
        )
    return value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{value} must be positive")
        return value

    return parse


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three non-negative numbers SYNFLOW,SNIP,GRASP (e.g. .2,.5,.3)"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    from jpanning.models import MODELS
    from jpanning.pruning import METHODS
    from jpanning.scores import TEMPERATURE

    p = _Parser(
        prog="run.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="resnet20",
        choices=list(MODELS),
        metavar="MODEL",
        help=f"network: {', '.join(MODELS)}",
    )
    p.add_argument(
        "--dataset",
        default=None,
        choices=DATASETS,
        metavar="DATASET",
        help=f"{', '.join(DATASETS)}; default: cifar10 when tfds can provide it, "
        "else fashion_mnist",
    )
    p.add_argument(
        "--ratio",
        type=_ratio,
        default=0.95,
        help="sparsity: fraction of prunable weights removed, in (0, 1)",
    )
    p.add_argument(
        "--method",
        default="rlpanning",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"pruning method: {', '.join(METHODS)}",
    )
    p.add_argument(
        "--scope",
        default="global",
        choices=("global", "layer"),
        help="rank weights over all layers together or per layer",
    )
    p.add_argument(
        "--rounds",
        type=_positive(int),
        default=None,
        help="rounds of the iterative methods (synflow, iter_snip, force, panning; default 100)",
    )
    p.add_argument(
        "--temperature",
        type=_positive(float),
        default=TEMPERATURE,
        help="GraSP and Panning take SNIP/GraSP at logits / temperature",
    )
    p.add_argument(
        "--panning-thresholds",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="panning: sparsity bounds of the hand schedule's bands (default 0.8 0.9 0.98 0.99)",
    )
    p.add_argument(
        "--panning-weights",
        type=_weights,
        nargs="+",
        default=None,
        metavar="SYN,SNIP,GRASP",
        help="panning: fusion weights per band, one more than thresholds "
        "(default .2,.5,.3 .2,.4,.4 .2,.3,.5 .4,.2,.4 .5,0,.5)",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive(int),
        default=None,
        help="score the scoring batch in chunks of this many examples (bounded memory; "
        "train-mode BatchNorm then normalises each chunk by its own statistics)",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=("paper", "quick"),
        help="rlpanning and purl: search budget (for rlpanning it implies --search); paper, "
        "the default: the authors' (rlpanning: 50k agent "
        "steps, T=100, 256-256 MLPs; purl: 55 episodes, 1,000 retraining images per layer); "
        "quick: minutes on a CPU (rlpanning: 200 steps, T=20, 64-64 MLPs; purl: 8 episodes, "
        "128 images): a smoke test",
    )
    p.add_argument(
        "--agent-steps",
        type=_positive(int),
        default=None,
        help="rlpanning: TD3 environment steps (default: the preset's)",
    )
    p.add_argument(
        "--scoring",
        default=None,
        choices=("fresh", "pool"),
        help="panning, rlpanning: SNIP/GraSP on a new class-balanced batch every round or "
        "step (fresh; the authors', the default) or on a pool of --pool-size batches scored "
        "once (pool); screening with a policy: default the policy's own",
    )
    p.add_argument(
        "--pool-size",
        type=_positive(int),
        default=None,
        help="--scoring pool: scoring batches in the pool (default: panning 1, rlpanning the "
        "preset's)",
    )
    p.add_argument(
        "--fusion",
        default="add",
        choices=("add", "mul"),
        help="panning, rlpanning: fuse the metrics as a weighted sum (add; the authors' "
        "default) or a product of powers (mul; with its own hand staircase)",
    )
    p.add_argument(
        "--effective",
        default="authors",
        choices=("authors", "paths"),
        help="rlpanning: effective sparsity in the reward; authors: weights alive in the "
        "positive SynFlow network, bias paths included; paths: weights on an input-output path",
    )
    p.add_argument(
        "--reset-observes-sparsity",
        action="store_true",
        help="rlpanning: the first observation carries the first round's sparsity (the "
        "authors' is 0, so the first action does not know the target)",
    )
    p.add_argument(
        "--policy",
        default=None,
        metavar="PATH",
        help="rlpanning: screen with this saved policy (a run's policy.msgpack), no search "
        "(default: the policy that ships for --model, see --search)",
    )
    p.add_argument(
        "--search",
        action="store_true",
        help="rlpanning: train a new policy (TD3, --preset's budget) instead of screening with "
        "the one that ships with jpanning",
    )
    p.add_argument(
        "--purl-episodes",
        type=_positive(int),
        default=None,
        help="purl: DQN training episodes (default: the preset's; paper 55, quick 8)",
    )
    p.add_argument(
        "--purl-alpha-step",
        type=_positive(float),
        default=None,
        help="purl: spacing of the α grid {0, step, ..., 2.2} (0.2; the paper also uses 0.1)",
    )
    p.add_argument(
        "--purl-state",
        default=None,
        choices=("compact", "per_layer"),
        help="purl: the agent's state, 2n per-layer accuracies and sparsities (per_layer, the "
        "paper's final choice) or (layer, accuracy, sparsity) (compact, its ablation)",
    )
    p.add_argument(
        "--purl-collapse",
        type=float,
        default=None,
        metavar="FRACTION",
        help="purl: end an episode when accuracy falls below FRACTION x the target (off)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        help="purl, uniform: prune this trained network (a dense run's model.npz) instead of "
        "training one first",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=_positive(int),
        default=None,
        help="purl, uniform: epochs of the dense training before pruning (default: --epochs)",
    )
    p.add_argument("--epochs", type=_positive(int), default=160)
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--lr", type=_positive(float), default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples-per-class",
        type=_positive(int),
        default=10,
        help="scoring batch: training examples per class given to the scorers",
    )
    p.add_argument(
        "--train-limit",
        type=_positive(int),
        default=None,
        help="use a seeded subset of this many training examples (quick runs)",
    )
    p.add_argument(
        "--test-limit",
        type=_positive(int),
        default=None,
        help="use a seeded subset of this many test examples",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="tfds data directory (default: $JPANNING_DATA_DIR or ~/tensorflow_datasets)",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/<run name>)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="OUT",
        help="continue the interrupted run in OUT with its own arguments (run.json): "
        "screening is not redone once masks.npz is there, training goes on from the newest "
        "checkpoint; the other arguments are ignored",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="run into an --out that holds a finished run (results.json, refused otherwise): "
        "its results.json and any checkpoints/ are removed first, its other files replaced "
        "as this run writes them",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="on an error, the tracebacks too (Python's, and what orbax prints while failing "
        "to read a damaged checkpoint), not just the one line",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive(int),
        default=None,
        metavar="STEPS",
        help="also checkpoint training every STEPS steps (always: at each epoch end and on "
        "SIGINT/SIGTERM)",
    )
    p.add_argument(
        "--devices",
        type=_positive(int),
        default=None,
        help="split batches over the first N devices (default: all; see jpanning.parallel)",
    )
    p.add_argument(
        "--allow-collapsed",
        action="store_true",
        help="train a mask that leaves a layer with no input-output path (refused otherwise)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


SEARCH_CHECKPOINT_EVERY = 200  # agent steps between checkpoints of an RL search by default
RUN_FILE = "run.json"  # the arguments of the run in OUT (and its run_id), for --resume
SCREEN_FILES = ("masks.npz", "screen.json")  # the screening's result, reused by --resume
# arguments a resumed run takes from its own call
NOT_SAVED = ("resume", "no_progress", "out", "overwrite", "verbose")
# what --resume may change: how the run goes on, not what it computes (--allow-collapsed lets a
# refused mask train without redoing its search)
RESUME_MAY_SET = (
    "allow_collapsed", "devices", "checkpoint_every", "data_dir", "no_progress", "verbose"
)  # fmt: skip
PATH_ARGS = ("pretrained", "policy", "data_dir")  # saved absolute, so --resume works anywhere


def read_json(path: str):
    """The JSON in ``path``, or None when it is missing or not JSON."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run_id(record) -> str | None:
    """The run_id a results.json (in its config), failed.json or run.json records."""
    if not isinstance(record, dict):
        return None
    return record.get("run_id", (record.get("config") or {}).get("run_id"))


def _ended(out: str) -> str | None:
    """'finished' or 'failed' when the run whose run.json is in ``out`` has ended, else None."""
    run = read_json(os.path.join(out, RUN_FILE))
    for name, how in (("results.json", "finished"), ("failed.json", "failed")):
        record = read_json(os.path.join(out, name))
        if record is not None and _run_id(record) == _run_id(run):
            return how
    return None


def _resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments saved in ``args.resume``/run.json, with this call's out and the few
    RESUME_MAY_SET it gives."""
    import json

    out = args.resume
    path = os.path.join(out, RUN_FILE)
    if not os.path.isdir(out):
        raise JPanningError(f"--resume {out!r} is not a directory")
    defaults = vars(build_parser().parse_args([]))
    given = sorted(
        k
        for k, v in vars(args).items()
        if k not in (*RESUME_MAY_SET, "resume") and v != defaults[k]
    )
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_SET)
        raise JPanningError(
            f"--resume takes the run's arguments from its {RUN_FILE}; {flags} cannot change "
            f"them (only {allowed} may be given)"
        )
    if _ended(out) == "finished":
        raise JPanningError(f"--resume {out!r}: that run has finished (results.json is there)")
    try:
        with open(path) as f:
            saved = json.load(f)
        resumed = argparse.Namespace(**saved)
        missing = sorted(set(defaults) - set(saved) - set(NOT_SAVED))
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
    except FileNotFoundError:
        raise JPanningError(f"--resume {out!r} holds no run to resume ({RUN_FILE} is missing)")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise JPanningError(f"--resume {out!r}: {RUN_FILE} is not readable ({e})")
    for k in RESUME_MAY_SET:
        if getattr(args, k) != defaults[k]:
            setattr(resumed, k, getattr(args, k))
    resumed.out, resumed.resume, resumed.no_progress = out, out, args.no_progress
    resumed.verbose, resumed.overwrite = args.verbose, False
    return resumed


def interrupted_run(out: str) -> str | None:
    """What a stopped run (not finished, not failed) left in ``out`` for ``--resume`` (None:
    nothing to resume)."""
    if not os.path.isfile(os.path.join(out, RUN_FILE)) or _ended(out):
        return None
    left = [f for f in (*SCREEN_FILES, "pretrained.npz") if os.path.isfile(os.path.join(out, f))]
    ckpt = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpt) and any(os.scandir(ckpt)):
        left.append("checkpoints/")
    return ", ".join(left) or None


def _check_out_dir(out: str) -> None:
    """Fail before any work if ``out`` cannot be created or written."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise JPanningError(f"--out {out!r} is not writable: {e.strerror or e}")


def run(args: argparse.Namespace, dataset=None) -> dict:
    """The whole pipeline for parsed arguments; returns the results dict it also writes.

    SIGINT and SIGTERM are held for the whole run: the searches and training loops poll them
    after each step and the pipeline between its stages; either way the work so far is saved
    and :class:`jpanning.checkpoint.Interrupted` is raised (a second signal of the same kind
    interrupts at once).

    ``dataset`` is the already loaded data of ``args`` (the benchmark harness loads it once
    for many runs); None loads it here.

    What a run computes is kept as it goes: the arguments (run.json), the screening's masks
    and reports (masks.npz, screen.json, the policy or the pretrained network) and training
    checkpoints (checkpoints/, orbax), so ``--resume OUT`` continues after a stop or a crash;
    the checkpoints are removed once results.json is written. While it lives the run holds
    OUT's lock (OUT/.lock): another run into OUT is refused, and so is a new run into a folder
    holding a finished run (results.json) without ``--overwrite`` (:func:`_own_out`).
    """
    from jpanning import checkpoint

    if args.resume is not None:
        args = _resumed_args(args)
        print(f"resuming the run in {args.out}")
    with checkpoint.StopSignal() as stop, contextlib.ExitStack() as owned:
        try:
            return _run(args, dataset, stop, owned)
        except RunFailed as e:  # a result of this run: recorded, so the folder is not "stopped"
            if getattr(args, "run_id", None) and os.path.isdir(args.out):
                from jpanning import report

                report.write_json(
                    os.path.join(args.out, "failed.json"), {"error": str(e), "run_id": args.run_id}
                )
            raise


def _check_stop(stop, out: str, where: str) -> None:
    """Raise :class:`jpanning.checkpoint.Interrupted` between stages when a stop is pending."""
    from jpanning import checkpoint

    signal_name = stop()
    if signal_name:
        raise checkpoint.Interrupted(
            f"stopped by {signal_name} {where}; continue with --resume {out}", signal_name
        )


def _own_out(args: argparse.Namespace, owned: contextlib.ExitStack) -> None:
    """Hold OUT's lock until ``owned`` closes (:func:`jpanning.checkpoint.owned`: one live run
    per folder; only the process that writes results locks), then, for a new run, refuse a
    folder with a finished run (results.json) unless --overwrite, which removes its
    results.json and any checkpoints/ first, or one with an interrupted run."""
    from jpanning import checkpoint, parallel

    if parallel.is_primary():
        owned.enter_context(checkpoint.owned(args.out, f"--out {args.out!r}"))
    if args.resume is not None:
        return
    finished = os.path.join(args.out, "results.json")
    if os.path.isfile(finished):
        if not args.overwrite:
            raise JPanningError(
                f"--out {args.out!r} holds a finished run (results.json); replace it with "
                "--overwrite, or choose another --out"
            )
        if parallel.is_primary():
            os.unlink(finished)
            shutil.rmtree(os.path.join(args.out, "checkpoints"), ignore_errors=True)
        return
    left = interrupted_run(args.out)
    if left:
        raise JPanningError(
            f"--out {args.out!r} holds an interrupted run ({left}); continue it with "
            f"--resume {args.out}, or choose another --out (or delete that one) to start over"
        )


def _choose_policy(args: argparse.Namespace) -> None:
    """RL Panning screens with ``--policy``, or searches (``--search``, or a search budget:
    ``--preset``, ``--agent-steps``), or else screens with the policy that ships for
    ``--model``: never a silent multi-hour search."""
    from jpanning import rlpanning

    if args.policy is not None and args.search:
        raise JPanningError(
            "--search trains a new policy and --policy screens with a saved one; give one of them"
        )
    if args.policy is None and (args.preset is not None or args.agent_steps is not None):
        args.search = True  # a search budget was given
    if args.search or args.policy is not None:
        return
    args.policy, line = rlpanning.shipped_policy(args.model)
    print(f"rlpanning: {line}")


def _run(args: argparse.Namespace, dataset, stop, owned: contextlib.ExitStack) -> dict:
    import jax
    import numpy as np

    from jpanning import (
        data,
        flops,
        masks as masks_lib,
        models,
        parallel,
        report,
        scores,
        train,
    )

    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise JPanningError(f"--data-dir {args.data_dir!r} does not exist")
    if args.dataset is None:
        args.dataset, reason = data.resolve_default_dataset(args.data_dir)
        print(f"dataset: {args.dataset} ({reason})")
    if args.out is None:
        args.out = os.path.join(
            "runs", f"{args.model}-{args.dataset}-{args.method}-{args.ratio}-seed{args.seed}"
        )
    for flag in ("policy", "search"):
        if getattr(args, flag) and args.method != "rlpanning":
            raise JPanningError(f"--{flag} is for --method rlpanning, not {args.method!r}")
    if args.policy is not None and not os.path.isfile(args.policy):
        raise JPanningError(f"--policy {args.policy!r} does not exist")
    if args.method == "rlpanning" and args.resume is None:
        _choose_policy(args)
    args.preset = args.preset or "paper"
    if args.scoring is None and not (args.method == "rlpanning" and args.policy):
        args.scoring = "fresh"  # the authors'; a policy screens with its own by default
    if args.pretrained is not None and args.method not in TRAINED_METHODS:
        raise JPanningError(
            f"--pretrained is for the methods that prune a trained network "
            f"({', '.join(TRAINED_METHODS)}), not {args.method!r}"
        )
    if args.pretrained is not None and not os.path.isfile(args.pretrained):
        raise JPanningError(f"--pretrained {args.pretrained!r} does not exist")
    _check_out_dir(args.out)
    _own_out(args, owned)
    sparsity = 0.0 if args.method == "dense" else args.ratio

    if args.no_progress and args.dataset != "synthetic":
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # the one-time dataset preparation has bars of its own
    if dataset is None:
        dataset = data.load_dataset(
            args.dataset,
            args.data_dir,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            seed=args.seed,
        )
    print(
        f"data: {dataset.name}, {dataset.num_train} train / {dataset.num_test} test, "
        f"{dataset.input_shape}, {dataset.num_classes} classes; {dataset.source}"
    )
    mesh = _mesh(args)
    key = jax.random.key(args.seed)
    init_key, prune_key, train_key = jax.random.split(key, 3)
    model = models.create_model(args.model, dataset.num_classes)
    variables = models.init_variables(model, init_key, dataset.input_shape)
    prunable = masks_lib.prunable_tree(variables["params"])
    batch = data.scoring_batch(dataset, args.samples_per_class, seed=args.seed)
    if mesh is not None and len(batch[1]) % mesh.size == 0:
        batch = parallel.put_batch(mesh, batch)  # the scorers' batch split over the devices
    if args.resume is None:
        import uuid

        args.run_id = uuid.uuid4().hex  # ties results.json / failed.json / screen.json to it
        for k in PATH_ARGS:
            if getattr(args, k) is not None:
                setattr(args, k, os.path.abspath(getattr(args, k)))
        report.write_json(
            os.path.join(args.out, RUN_FILE),
            {k: v for k, v in vars(args).items() if k not in NOT_SAVED},
        )
    config = train.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
    pretrained = None
    if args.method in TRAINED_METHODS:
        variables, pretrained = _pretrained(
            args, model, variables, dataset, config, train_key, mesh, stop
        )
        _check_stop(stop, args.out, "after the dense pretraining (pretrained.npz saved)")
        # the pretraining used train_key (as a dense run with this seed does)
        train_key = jax.random.fold_in(train_key, 1)

    screened = _load_screen(args, variables["params"]) if args.resume else None
    if screened is None:
        masks, screen = _screen(
            args, dataset, model, variables, batch, sparsity, prunable, prune_key, stop
        )
    else:
        masks, screen = screened
        print(f"screening: the masks in {os.path.join(args.out, 'masks.npz')} (resumed)")
    prune_seconds = screen["prune_seconds"]
    sparsity_report = masks_lib.sparsity_report(masks, prunable)
    if screened is None:  # kept before the checks: a refused mask's search is not lost
        if args.method == "purl":
            screen["purl"] = _purl_report(args, screen.pop("result"), sparsity_report)
        _save_screen(args.out, masks, screen | {"run_id": args.run_id})
    empty = masks_lib.empty_layers(masks, prunable)
    if empty:
        raise RunFailed(
            f"method {args.method!r} at ratio {args.ratio} pruned every weight of "
            f"layer(s) {', '.join(empty)}: the network is cut; lower --ratio or "
            "use --scope layer"
        )
    eval_apply = models.make_apply_fn(model, variables["batch_stats"], train=False)
    effective = float(
        scores.effective_sparsity(eval_apply, masks, dataset.input_shape, prunable=prunable)
    )
    collapsed = scores.collapsed_layers(eval_apply, masks, dataset.input_shape, prunable=prunable)
    forward = flops.forward_flops(model, variables, masks, prunable, dataset.input_shape)
    print(
        f"pruned with {args.method} in {prune_seconds:.2f}s: kept {sparsity_report['kept']:,} "
        f"of {sparsity_report['total']:,} prunable weights "
        f"(sparsity {sparsity_report['sparsity']:.4f}, effective {effective:.4f}); "
        f"forward FLOPs {forward['fraction']:.4f} of dense"
    )
    if collapsed:
        where = (
            "no input reaches the output"
            if effective >= 1.0
            else "the network stays connected only around them"
        )
        message = (
            f"method {args.method!r} at ratio {args.ratio} left no input-output path through "
            f"layer(s) {', '.join(collapsed)}: the network is cut there ({where})"
        )
        if not args.allow_collapsed:
            raise RunFailed(
                f"{message}; lower --ratio, or train this mask anyway with --resume {args.out} "
                "--allow-collapsed"
            )
        print(f"warning: {message}; training it (--allow-collapsed)")

    start = time.perf_counter()
    _check_stop(stop, args.out, "after screening (masks.npz saved)")
    state, history = _train(
        args, "train", model, variables, dataset, config, train_key,
        None if args.method == "dense" else masks, mesh, stop,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    final = history[-1]
    trained_masks = masks_lib.sparsity_report(
        jax.tree.map(lambda p: (p != 0).astype(np.float32), state.params), prunable
    )

    results = {
        "config": vars(args) | {"train": dataclasses.asdict(config)},
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
            "name": args.model,
            "params": models.count_params(variables["params"]),
            "prunable": sparsity_report["total"],
        },
        "sparsity": sparsity_report,
        "effective_sparsity": effective,
        "collapsed_layers": collapsed,
        "flops": forward,
        "nonzero_after_training": {
            "kept": trained_masks["kept"],
            "sparsity": trained_masks["sparsity"],
        },
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "prune_seconds": prune_seconds,
        "train_seconds": train_seconds,
        "history": history,
        "files": {"masks_and_params": "model.npz", "density_plot": "density.png"},
    }
    report.save_npz(
        os.path.join(args.out, "model.npz"),
        masks=masks,
        params=state.params,
        batch_stats=state.batch_stats,
    )
    report.plot_layer_density(
        sparsity_report,
        os.path.join(args.out, "density.png"),
        f"{args.model} / {dataset.name} / {args.method} "
        f"(sparsity {sparsity_report['sparsity']:.4f})",
    )
    if "rl" in screen:
        results["rl"] = screen["rl"]
        results["files"] |= {k: v for k, v in results["rl"]["files"].items() if v}
    if pretrained is not None:
        results["pretrained"] = pretrained
        if pretrained.get("file"):
            results["files"]["pretrained"] = pretrained["file"]
    if "purl" in screen:
        results["purl"] = screen["purl"]
        results["files"] |= results["purl"]["files"]
    report.write_json(os.path.join(args.out, "results.json"), results)
    if parallel.is_primary():  # results are in; checkpoints are no longer needed
        shutil.rmtree(os.path.join(args.out, "checkpoints"), ignore_errors=True)
    print(
        report.summary_table(
            [
                ("model", f"{args.model} ({results['model']['params']:,} params)"),
                (
                    "dataset",
                    f"{dataset.name} ({dataset.num_train} train / {dataset.num_test} test)",
                ),
                ("method", f"{args.method} ({args.scope})"),
                (
                    "sparsity",
                    f"{sparsity_report['sparsity']:.6f} (kept {sparsity_report['kept']:,} / "
                    f"{sparsity_report['total']:,})",
                ),
                ("effective sparsity", f"{effective:.6f}"),
                (
                    "forward FLOPs",
                    f"{forward['remaining'] / 1e6:,.2f} M of {forward['dense'] / 1e6:,.2f} M "
                    f"per image ({forward['fraction']:.4f})",
                ),
                ("test accuracy", f"{final['test_accuracy']:.4f}"),
                ("prune time", f"{prune_seconds:.2f} s"),
                ("train time", f"{train_seconds:.1f} s ({args.epochs} epochs)"),
                ("results", os.path.join(args.out, "results.json")),
            ]
        )
    )
    return results


def _train(args: argparse.Namespace, stage: str, model, variables, dataset, config, key, masks,
           mesh, stop):  # fmt: skip
    """:func:`jpanning.train.train` checkpointed in OUT/checkpoints/<stage>, stopped by ``stop``."""
    from jpanning import checkpoint, train

    with checkpoint.opened(
        os.path.join(args.out, "checkpoints", stage), args.checkpoint_every or 0, args.verbose
    ) as ckpt:
        return train.train(
            model,
            variables,
            dataset,
            config,
            key,
            masks=masks,
            progress=not args.no_progress,
            mesh=mesh,
            checkpoints=ckpt,
            stop=stop,
        )


def _mesh(args: argparse.Namespace):
    """The device mesh batches are split over; None on a single device (no sharding)."""
    import jax

    from jpanning import parallel

    n = args.devices or jax.device_count()
    if n == 1 and args.devices in (None, 1):
        return None
    mesh = parallel.make_mesh(n)
    print(f"devices: {n} x {jax.devices()[0].platform}, batches split over them")
    return mesh


def _screen(
    args: argparse.Namespace, dataset, model, variables, batch, sparsity, prunable, key, stop
):
    """Run the pruning method: ``(masks, screen)``, ``screen`` what results.json keeps of it
    (seconds; the RL report, written with the policy now; PuRL's result object)."""
    from jpanning import pruning

    problem = pruning.PruneProblem(
        model=model,
        variables=variables,
        batch=batch,
        sparsity=sparsity,
        prunable=prunable,
        key=key,
        scope=args.scope,
        options={
            "rounds": args.rounds,
            "chunk_size": args.chunk_size,
            "temperature": args.temperature,
            "thresholds": args.panning_thresholds,
            "weights": args.panning_weights,
            "fusion": args.fusion,
            "scoring": args.scoring,
            "effective": args.effective,
            "reset_observes_sparsity": args.reset_observes_sparsity,
            "samples_per_class": args.samples_per_class,
            "preset": args.preset,
            "agent_steps": args.agent_steps,
            "policy": args.policy,
            "episodes": args.purl_episodes,
            "alpha_step": args.purl_alpha_step,
            "state": args.purl_state,
            "collapse_accuracy": args.purl_collapse,
        },
    )
    start = time.perf_counter()
    screen = {}
    if args.method == "rlpanning":
        rl = _rl_search(args, problem, dataset, stop)
        masks = rl.masks
        screen["rl"] = _rl_report(args, rl)  # the policy is saved before training starts
    elif args.method == "purl":
        result = _purl_search(args, problem, dataset, stop)
        masks, screen["result"] = result.masks, result
    else:
        if args.method == "panning":  # T fresh batches, or a pool cycled through
            count = (args.rounds or 100) if args.scoring == "fresh" else (args.pool_size or 1)
            from jpanning import rlpanning

            data = rlpanning.score_pool(dataset, args.samples_per_class, count, args.seed)
            problem = dataclasses.replace(problem, options=problem.options | {"data": data})
        masks = pruning.prune(args.method, problem)
    screen["prune_seconds"] = time.perf_counter() - start
    return masks, screen


def _save_screen(out: str, masks, screen: dict) -> None:
    """Keep the screening's result (masks.npz, screen.json) for ``--resume``."""
    from jpanning import report

    report.save_npz(os.path.join(out, "masks.npz"), masks=masks)
    report.write_json(os.path.join(out, "screen.json"), screen)


def _load_screen(args: argparse.Namespace, params):
    """The saved ``(masks, screen)`` of a resumed run, or None when screening had not ended."""
    import json

    import jax
    import numpy as np

    from jpanning import report

    paths = [os.path.join(args.out, f) for f in SCREEN_FILES]
    if not all(os.path.isfile(p) for p in paths):
        return None
    try:
        masks = report.load_npz(paths[0])["masks"]
        with open(paths[1]) as f:
            screen = json.load(f)
        if screen.get("run_id") != args.run_id:
            return None  # another run's screening: screen again
        if jax.tree.structure(masks) != jax.tree.structure(params):
            raise ValueError("its masks are not shaped like this model's params")
        masks = jax.tree.map(jax.numpy.asarray, masks)
        for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(params)):
            if np.shape(m) != np.shape(p):
                raise ValueError(f"a mask of shape {np.shape(m)} for params {np.shape(p)}")
    except Exception as e:  # numpy, zipfile and json raise several types on damaged files
        raise JPanningError(
            f"--resume {args.out!r}: the saved screening (masks.npz, screen.json) is not "
            f"readable ({type(e).__name__}: {e}); delete both to screen again"
        )
    return masks, screen


def _pretrained(args: argparse.Namespace, model, variables, dataset, config, key, mesh, stop):
    """The trained network a method like PuRL prunes: loaded from ``--pretrained`` or trained
    densely here with the run's recipe (``--pretrain-epochs``, checkpointed like the main
    training) and saved as pretrained.npz with pretrained.json (reused by ``--resume``).

    Returns:
        ``(variables, info)``, ``info`` for results.json.
    """

    import jax

    from jpanning import report

    if args.pretrained is not None:
        return _load_pretrained(args.pretrained, variables), {"from": args.pretrained}
    saved = os.path.join(args.out, "pretrained.npz"), os.path.join(args.out, "pretrained.json")
    info = read_json(saved[1]) if args.resume else None
    if info is not None and info.get("run_id") == args.run_id and os.path.isfile(saved[0]):
        print(f"{args.method}: the trained network in {saved[0]} (resumed)")
        info.pop("run_id")
        return _load_pretrained(saved[0], variables, "the saved pretrained.npz"), info
    epochs = args.pretrain_epochs or args.epochs
    print(f"{args.method} prunes a trained network: dense training for {epochs} epoch(s) first")
    start = time.perf_counter()
    state, history = _train(
        args, "pretrain", model, variables, dataset,
        dataclasses.replace(config, epochs=epochs), key, None, mesh, stop,
    )  # fmt: skip
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    info = {
        "from": None,
        "epochs": epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "seconds": time.perf_counter() - start,
        "file": "pretrained.npz",
    }
    report.save_npz(saved[0], **variables)
    report.write_json(saved[1], info | {"run_id": args.run_id})
    return jax.tree.map(jax.numpy.asarray, variables), info


def _load_pretrained(path: str, variables: dict, what: str | None = None) -> dict:
    """``{'params', 'batch_stats'}`` from a run's model.npz, checked against the model;
    ``what`` names the file in errors (default: the ``--pretrained`` argument)."""
    import jax
    import numpy as np

    from jpanning import masks as masks_lib, report

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


@contextlib.contextmanager
def _search_checkpoints(args: argparse.Namespace):
    """Checkpoints for an agent's search: OUT/checkpoints/search, every ``--checkpoint-every``
    (default SEARCH_CHECKPOINT_EVERY) agent steps and on a signal."""
    from jpanning import checkpoint

    every = args.checkpoint_every or SEARCH_CHECKPOINT_EVERY
    with checkpoint.opened(
        os.path.join(args.out, "checkpoints", "search"), every, args.verbose
    ) as ckpt:
        yield ckpt


@contextlib.contextmanager
def _agent_bar(desc: str, total: int, disable: bool):
    """A progress bar over an agent's environment steps, with the episodes finished and the
    last return; yields the ``callback(t, metrics)`` the agents' host loops call."""
    from tqdm.auto import tqdm

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


def _purl_search(args: argparse.Namespace, problem, dataset, stop):
    """PuRL: draw its retraining/eval examples, train the DQN agent (progress bar), prune."""
    import dataclasses as dc

    import jax

    from jpanning import purl

    config = purl.config_from_options(problem.options)
    problem = dc.replace(
        problem,
        options=problem.options | {"purl_data": purl.split_examples(dataset, config, args.seed)},
    )
    print(
        f"purl: DQN over the layers, {config.episodes} episodes, α in "
        f"{{0, {config.alpha_step:g}, ..., {config.alpha_max:g}}}, retraining on "
        f"{config.retrain_images} examples per layer ({args.preset} preset)"
    )
    layers = sum(bool(f) for f in jax.tree.leaves(problem.prunable))
    with (
        _agent_bar("PuRL search", config.episodes * layers, args.no_progress) as progress,
        _search_checkpoints(args) as ckpt,
    ):
        return purl.run(problem, callback=progress, checkpoints=ckpt, stop=stop)


def _purl_report(args: argparse.Namespace, result, sparsity_report: dict) -> dict:
    """The α per layer (PNG), the DQN learning curve (PNG), the ``purl`` entry of results."""
    from jpanning import report
    from jpanning.agents import loop

    metrics = result.metrics
    steps, returns = (x.tolist() for x in loop.episode_returns(metrics))
    report.plot_layer_alphas(
        result.layers,
        result.alphas,
        [sparsity_report["layers"][name]["density"] for name in result.layers],
        os.path.join(args.out, "purl_alphas.png"),
        f"PuRL: {args.model} / {args.dataset}, target sparsity {args.ratio}",
    )
    report.plot_learning_curve(
        steps,
        returns,
        os.path.join(args.out, "purl_curve.png"),
        f"PuRL DQN: {args.model} / {args.dataset}",
    )
    print(
        "purl: α per layer "
        + " ".join(f"{a:.2f}" for a in result.alphas)
        + f"; greedy episodes ended at accuracy {result.final_accuracy.mean():.4f}, "
        f"sparsity {result.final_sparsity.mean():.4f} (before fine-tuning)"
    )
    return {
        "layers": result.layers,
        "alphas": result.alphas.tolist(),
        "episode_alphas": result.episode_alphas.tolist(),
        "final_accuracy": result.final_accuracy.tolist(),
        "final_sparsity": result.final_sparsity.tolist(),
        "dense_accuracy": result.dense_accuracy,
        "target_accuracy": result.target_accuracy,
        "episode_end_steps": steps,
        "episode_returns": returns,
        "epsilon": metrics["epsilon"].tolist(),
        "search_seconds": result.search_seconds,
        "config": dataclasses.asdict(result.config),
        "files": {"purl_alphas": "purl_alphas.png", "purl_curve": "purl_curve.png"},
    }


def _rl_search(args: argparse.Namespace, problem, dataset, stop):
    """RL Panning: build the pool, search (progress bar) or load the policy, and screen."""
    import dataclasses as dc

    from jpanning import rlpanning

    if args.policy is None:
        config = rlpanning.config_from_options(problem.options)
    else:
        config = rlpanning.load_policy(args.policy)[1]
        if args.scoring is None:  # the policy's own (results.json records it)
            args.scoring = config.scoring
            problem = dc.replace(problem, options=problem.options | {"scoring": args.scoring})
    pool_size = args.pool_size or config.pool_size
    if args.scoring == "pool":
        data = rlpanning.score_pool(dataset, args.samples_per_class, pool_size, args.seed)
        scoring = f"a pool of {pool_size} scoring batches"
    else:
        data = (dataset.train_images, dataset.train_labels)
        scoring = f"a fresh batch of {args.samples_per_class} per class every step"
    problem = dc.replace(problem, options=problem.options | {"data": data})
    if args.policy is not None:
        print(f"rlpanning: screening with the policy in {args.policy} (no search), {scoring}")
        return rlpanning.run(problem)
    print(
        f"rlpanning: TD3 search, {config.agent_steps} agent steps, T={config.rounds} rounds, "
        f"{scoring} ({args.preset} preset)"
    )
    with (
        _agent_bar("RL search", config.agent_steps, args.no_progress) as progress,
        _search_checkpoints(args) as ckpt,
    ):
        return rlpanning.run(problem, callback=progress, checkpoints=ckpt, stop=stop)


def _rl_report(args: argparse.Namespace, rl) -> dict:
    """Save the policy and the learning curve; the ``rl`` entry of results.json."""
    from jpanning import report, rlpanning

    files = {"policy": None, "rl_curve": None}
    out = {
        "preset": args.preset if args.policy is None else None,
        "policy_loaded_from": args.policy,
        "agent_steps": rl.config.agent_steps if rl.metrics is not None else 0,
        "rounds": rl.config.rounds,
        "td3": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(rl.config.agent_config()).items()
        },
        "env": rl.env_options,
        "ranges": None
        if rl.ranges is None
        else {"loss": rl.ranges.loss.tolist(), "grad_norm": rl.ranges.grad_norm.tolist()},
        "search_seconds": rl.search_seconds,
        "screen_seconds": rl.screen_seconds,
        "screen": {k: v.tolist() for k, v in rl.trace.items()},
    }
    if rl.metrics is not None:
        files["policy"] = "policy.msgpack"
        rlpanning.save_policy(
            os.path.join(args.out, files["policy"]),
            rl.actor_params,
            rl.config,
            meta={
                "model": args.model,
                "dataset": args.dataset,
                "seed": args.seed,
                "agent_steps": rl.config.agent_steps,
            },
            ranges=rl.ranges,
        )
        steps, returns = rlpanning.episode_returns(rl.metrics)
        out["episode_end_steps"] = steps.tolist()
        out["episode_returns"] = returns.tolist()
        files["rl_curve"] = "rl_curve.png"
        report.plot_learning_curve(
            steps,
            returns,
            os.path.join(args.out, files["rl_curve"]),
            f"RL Panning search: {args.model} / {args.dataset}, T={rl.config.rounds}",
        )
        print(
            f"rlpanning: searched in {rl.search_seconds:.1f}s, {len(returns)} episodes"
            + (f", last return {returns[-1]:.2f}" if len(returns) else "")
            + f"; policy saved to {os.path.join(args.out, files['policy'])}"
        )
    out["files"] = files
    return out


def enable_compilation_cache() -> None:
    """Turn on XLA's persistent compilation cache: a rerun with the same shapes loads its
    programs instead of compiling them (the same programs, so the same results).

    ``$JPANNING_COMPILATION_CACHE`` names the folder (default ``~/.cache/jpanning/xla``);
    ``off`` leaves JAX's settings alone.
    """
    import jax

    path = os.environ.get("JPANNING_COMPILATION_CACHE", "~/.cache/jpanning/xla")
    if path == "off":
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    from jpanning import cpu, parallel

    args = build_parser().parse_args(argv)
    cpu.configure()  # the process's CPU tuning, before JAX starts (importing jpanning sets none)
    try:
        parallel.initialize()
        enable_compilation_cache()
        run(args)
    except JPanningError as e:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"run.py: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130
    return 0
