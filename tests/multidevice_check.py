"""Run under ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` by tests/test_parallel.py:
the same work on one device and split over 4 (simulated CPU) devices; prints one JSON line
of what the test compares. A script because JAX fixes its device count at start-up."""

import dataclasses
import json
import sys

import jax
import numpy as np

from jpanning import cpu, data, env as E, masks as M, models, parallel, pruning, train


def main() -> None:
    cpu.configure()  # as run.py, before JAX starts
    assert jax.device_count() == 4, jax.devices()
    mesh = parallel.make_mesh()
    dataset = data.load_dataset("synthetic", seed=0)
    model = models.create_model("tinycnn", dataset.num_classes)
    variables = models.init_variables(model, jax.random.key(0), dataset.input_shape)
    prunable = M.prunable_tree(variables["params"])
    batch = data.scoring_batch(dataset, 4, seed=0)  # 40 examples: 10 per device
    out = {}

    # Scoring: the scoring batch split over the devices gives the same masks.
    for method in ("snip", "grasp", "panning"):
        problem = pruning.PruneProblem(
            model=model, variables=variables, batch=batch, sparsity=0.8, prunable=prunable,
            key=jax.random.key(1), options={"rounds": 3},
        )  # fmt: skip
        one = pruning.prune(method, problem)
        sharded_batch = parallel.put_batch(mesh, batch)
        assert len(sharded_batch[0].sharding.device_set) == 4
        four = pruning.prune(method, dataclasses.replace(problem, batch=sharded_batch))
        out[f"{method}_same_mask"] = all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four))
        )
        out["masks"] = one

    # Training: the batch split over 4 devices, the state replicated.
    masks = out.pop("masks")
    config = train.TrainConfig(epochs=2, batch_size=32, lr=0.05, check_every=7)
    args = (model, variables, dataset, config, jax.random.key(2))
    kw = dict(masks=masks, progress=False, log=lambda s: None)
    s1, h1 = train.train(*args, **kw)
    s4, h4 = train.train(*args, **kw, mesh=mesh)
    out["history_1"], out["history_4"] = h1, h4
    leaf = jax.tree.leaves(s4.params)[0]
    out["state_devices"] = len(leaf.sharding.device_set)
    out["max_param_diff"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params))
    )
    out["pruned_stay_zero"] = all(
        bool(np.all(np.asarray(p)[np.asarray(m) == 0] == 0))
        for p, m in zip(jax.tree.leaves(s4.params), jax.tree.leaves(masks))
    )

    # A batch of 4 Panning environments, one per device.
    env = E.PanningEnv(
        models.make_apply_fn(model, variables["batch_stats"], train=True),
        models.make_apply_fn(model, variables["batch_stats"], train=False),
        prunable,
        dataset.input_shape,
    )
    xs = dataset.train_images[:60].reshape(3, 20, *dataset.input_shape)
    ys = dataset.train_labels[:60].reshape(3, 20)
    env_params = env.make_params(variables["params"], xs, ys, rounds=4)
    keys = jax.random.split(jax.random.key(3), 4)
    actions = jax.random.uniform(jax.random.key(4), (4, 3), minval=-1, maxval=1)
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    _, states = reset(keys, env_params)
    single = step(keys, states, actions, env_params)
    states4, actions4 = parallel.put_batch(mesh, (states, actions))
    keys4 = jax.device_put(keys, parallel.batch_sharding(mesh))
    step4 = jax.jit(parallel.vmap_over_devices(env.step, mesh, (0, 0, 0, None)))
    split = step4(keys4, states4, actions4, env_params)
    out["env_devices"] = len(jax.tree.leaves(split[1].masks)[0].sharding.device_set)
    out["env_max_diff"] = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(split))
    )
    out["env_same_masks"] = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(single[1].masks), jax.tree.leaves(split[1].masks))
    )
    # run.py --devices 4 against --devices 1: the same masks, the same history within tolerance.
    import contextlib
    import io
    import tempfile

    from jpanning import cli, report

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 4):
            argv = ["--dataset", "synthetic", "--model", "tinycnn", "--method", "snip",
                    "--ratio", "0.8", "--epochs", "1", "--batch-size", "32", "--no-progress",
                    "--devices", str(n), "--out", f"{tmp}/d{n}"]  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()) as log:
                results = cli.run(cli.build_parser().parse_args(argv))
            runs[n] = (results, report.load_npz(f"{tmp}/d{n}/model.npz"), log.getvalue())
    out["cli_split_message"] = "devices: 4 x cpu, batches split over them" in runs[4][2]
    out["cli_same_masks"] = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(runs[1][1]["masks"]), jax.tree.leaves(runs[4][1]["masks"]))
    )
    out["cli_history_1"], out["cli_history_4"] = runs[1][0]["history"], runs[4][0]["history"]
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
