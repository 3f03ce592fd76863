"""run.py on a machine without tensorflow-datasets (the lent GPU machine): the data travels.

The GPU machine has JAX but no tfds and no network, so the dataset's raw splits are packed
here into one ``.npz`` (uint8 images, as stored), carried along, and handed to run.py's own
pipeline (:func:`jpanning.cli.run` with the loaded :class:`jpanning.data.Dataset`): the same
normalisation, scoring batches, search and training as ``python run.py`` with the prepared
dataset, only the reading differs.

    python -m benchmarks.device_search pack .devdata/fashion_mnist.npz [--dataset fashion_mnist]
    python -m benchmarks.device_search run .devdata/fashion_mnist.npz -- RUN.PY ARGUMENTS

``run`` prints the run's wall time, and writes ``device_run.json`` into the run's ``--out``
(the command, the wall time, whether it finished or was stopped, the machine and versions). A
SIGTERM (``timeout -s TERM``) stops the run as run.py does, with its checkpoints written, so
``--resume`` continues it anywhere. ``scripts/device_search.sh`` is the device command.
"""

import argparse
import os
import sys
import time

import numpy as np

from jpanning import data, report


def pack(path: str, dataset: str, data_dir: str | None) -> None:
    splits, num_classes, source = data.read_splits(dataset, data_dir)
    arrays = {}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(
        tmp, name=dataset, num_classes=num_classes, source=source, **arrays
    )
    os.replace(tmp, path)
    print(f"{path}: {dataset}, {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")


def unpack(path: str) -> tuple[str, dict, int, str]:
    with np.load(path) as f:
        splits = {s: (f[f"{s}_images"], f[f"{s}_labels"]) for s in ("train", "test")}
        name, num_classes = str(f["name"]), int(f["num_classes"])
        source = f"{f['source']} (carried as {os.path.basename(path)})"
    return name, splits, num_classes, source


def run(path: str, argv: list[str]) -> int:
    from jpanning import checkpoint, cli, experiment, parallel
    from jpanning.errors import JPanningError

    args = cli.build_parser().parse_args(argv)
    name, splits, num_classes, source = unpack(path)
    # A resumed run's settings are its run.json's.
    given = experiment.resumed_config(args.resume).flat() if args.resume else vars(args)
    if given["dataset"] != name:
        raise SystemExit(f"device_search: --dataset {given['dataset']} but {path} holds {name}")
    dataset = data.from_splits(
        name, splits, num_classes, source,
        train_limit=given["train_limit"], test_limit=given["test_limit"], seed=given["seed"],
    )  # fmt: skip
    parallel.initialize()
    start, status = time.perf_counter(), "finished"
    try:
        cli.run(args, dataset)
    except checkpoint.Interrupted as e:
        status = f"stopped: {e}"
    except JPanningError as e:
        status = f"error: {e}"
    seconds = time.perf_counter() - start
    print(f"device_search: {status}; {seconds:.1f} s")
    out = args.out if args.resume is None else args.resume
    record = {
        "argv": argv,
        "status": status,
        "seconds": round(seconds, 1),
        "environment": report.environment(),
    }
    if os.path.isdir(out):
        report.write_json(os.path.join(out, "device_run.json"), record)
    return 0 if status == "finished" or status.startswith("stopped") else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest = []
    if "--" in argv:
        argv, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("pack", "run"))
    p.add_argument("path", help="the .npz of the dataset's raw splits")
    p.add_argument("--dataset", default="fashion_mnist", help="pack: which dataset")
    p.add_argument("--data-dir", default=None, help="pack: tfds data directory")
    a = p.parse_args(argv)
    if a.action == "pack":
        pack(a.path, a.dataset, a.data_dir)
        return 0
    return run(a.path, rest)


if __name__ == "__main__":
    sys.exit(main())
