"""The connectivity rule of a run (issue 34): train every mask that still connects input to
output, refuse only a disconnected one; the literature's protocol (SynFlow's paper trains SNIP
masks that empty ResNet layers and reports their effective sparsity)."""

import json
import math

import jax
import numpy as np
import pytest

from jpanning import experiment, masks as masks_lib, models, pruning
from jpanning.config import RunConfig
from jpanning.errors import RunFailed


class _Problem:
    """What experiment._check_masks reads of a pruning problem."""

    def __init__(self, model_name, input_shape):
        self.model = models.create_model(model_name, 10)
        self.variables = models.init_variables(self.model, jax.random.key(0), input_shape)
        self.prunable = masks_lib.prunable_tree(self.variables["params"])


class _Data:
    def __init__(self, input_shape):
        self.input_shape = input_shape
        self.num_classes = 10


def _config(tmp_path, **settings):
    return RunConfig.from_flat({"model": "resnet20", "method": "snip", "ratio": 0.9,
                                "out": str(tmp_path)} | settings)  # fmt: skip


def _emptied(params, prunable, names):
    """All-ones masks with the prunable layers whose path contains one of ``names`` zeroed."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(masks_lib.ones_like(params))
    flags = jax.tree.leaves(prunable)
    out = []
    for (path, m), f in zip(flat, flags):
        name = masks_lib.path_str(path)
        out.append(np.zeros_like(m) if f and any(n in name for n in names) else m)
    return treedef.unflatten(out)


def _size(params, prunable, names):
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return sum(
        math.prod(np.shape(x))
        for (path, x), f in zip(flat, jax.tree.leaves(prunable))
        if f and any(n in masks_lib.path_str(path) for n in names)
    )


SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def resnet():
    return _Problem("resnet20", SHAPE)


def test_an_emptied_residual_branch_is_trained_with_its_exact_effective_sparsity(
    resnet, tmp_path, capsys
):
    params, prunable = resnet.variables["params"], resnet.prunable
    total = sum(math.prod(np.shape(x)) for x, f in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(prunable)) if f)  # fmt: skip
    # the whole branch of block 4: both convolutions emptied
    masks = _emptied(params, prunable, ["BasicBlock_4/Conv_0/", "BasicBlock_4/Conv_1/"])
    checked = experiment._check_masks(
        _config(tmp_path), resnet, _Data(SHAPE), experiment.Screened(masks, {}, 0.0)
    )
    branch = ["BasicBlock_4/Conv_0/kernel", "BasicBlock_4/Conv_1/kernel"]
    assert checked.emptied == branch and checked.bypassed == branch
    assert not checked.disconnected
    size = _size(params, prunable, ["BasicBlock_4/Conv_0/", "BasicBlock_4/Conv_1/"])
    assert checked.effective == pytest.approx(size / total, abs=1e-7)
    out = capsys.readouterr().out
    assert "note: the mask emptied BasicBlock_4/Conv_0/kernel, BasicBlock_4/Conv_1/kernel" in out
    assert "routes around them" in out

    # only its first convolution emptied: the second keeps its weights but no input reaches
    # it (it sees BatchNorm's constant shift), so it is bypassed and counts as pruned
    masks = _emptied(params, prunable, ["BasicBlock_4/Conv_0/"])
    checked = experiment._check_masks(
        _config(tmp_path), resnet, _Data(SHAPE), experiment.Screened(masks, {}, 0.0)
    )
    assert checked.emptied == branch[:1] and checked.bypassed == branch
    assert checked.effective == pytest.approx(size / total, abs=1e-7)
    assert "left off every path BasicBlock_4/Conv_1/kernel" in capsys.readouterr().out


@pytest.mark.parametrize(
    "model, layer",
    [("resnet20", "Conv_0/kernel"), ("lenet5", "Conv_1/kernel")],
)
def test_a_layer_that_every_path_crosses_emptied_is_refused_as_disconnected(
    model, layer, resnet, tmp_path
):
    problem = resnet if model == "resnet20" else _Problem(model, SHAPE)
    params, prunable = problem.variables["params"], problem.prunable
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    assert layer in [masks_lib.path_str(p) for p, _ in flat]  # the stem, a chain's layer
    masks = _emptied(params, prunable, [layer.removesuffix("kernel")])
    if model == "resnet20":  # only the stem: not BasicBlock_*/Conv_0
        masks = jax.tree_util.tree_map_with_path(
            lambda p, m: np.zeros_like(m) if masks_lib.path_str(p) == layer else np.ones_like(m),
            masks,
        )
    config = _config(tmp_path, model=model)
    with pytest.raises(RunFailed, match="left no input-output path .effective sparsity 1.") as e:
        experiment._check_masks(config, problem, _Data(SHAPE), experiment.Screened(masks, {}, 0.0))
    assert e.value.disconnected and layer in str(e.value)
    assert f"--resume {tmp_path} --allow-collapsed" in str(e.value)
    # --allow-collapsed trains it anyway (it can only learn its biases)
    allowed = experiment._check_masks(
        config.replace(allow_collapsed=True),
        problem,
        _Data(SHAPE),
        experiment.Screened(masks, {}, 0.0),
    )
    assert allowed.disconnected and allowed.effective == 1.0


def test_a_run_trains_a_routed_around_mask_and_records_its_layers(tmp_path, monkeypatch):
    """End to end: the ResNet's emptied branch trains, results.json names the layers, and
    the emptied weights stay zero through training."""
    monkeypatch.setenv("JPANNING_COMPILATION_CACHE", "off")
    real_screen = pruning.screen

    def screen(name, problem, context):
        masks, record = real_screen(name, problem, context)
        return _emptied(problem.params, problem.prunable, ["BasicBlock_7/"]), record

    monkeypatch.setattr(pruning, "screen", screen)
    config = RunConfig.from_flat(
        {"model": "resnet20", "dataset": "synthetic", "method": "magnitude", "ratio": 0.5}
        | {
            "epochs": 1,
            "batch_size": 32,
            "train_limit": 64,
            "test_limit": 32,
            "samples_per_class": 2,
        }
        | {"out": str(tmp_path / "run"), "no_progress": True}
    )
    results = experiment.run(config)
    branch = ["BasicBlock_7/Conv_0/kernel", "BasicBlock_7/Conv_1/kernel"]
    assert results["emptied_layers"] == results["bypassed_layers"] == branch
    assert results["disconnected"] is False and 0.0 < results["test_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    # the branch is all that is pruned, and all that is off the paths
    assert saved["effective_sparsity"] == pytest.approx(saved["sparsity"]["sparsity"], abs=1e-7)
    assert saved["sparsity"]["layers"][branch[0]]["kept"] == 0
    from jpanning import report

    params = report.flatten_tree(report.load_npz(str(tmp_path / "run" / "model.npz"))["params"])
    for name in branch:
        assert not np.any(params[name]), name


def test_a_disconnected_run_records_chance_accuracy_in_failed_json(tmp_path, monkeypatch):
    monkeypatch.setenv("JPANNING_COMPILATION_CACHE", "off")

    def screen(name, problem, context):
        return _emptied(problem.params, problem.prunable, ["Dense_"]), {}

    monkeypatch.setattr(pruning, "screen", screen)
    config = RunConfig.from_flat(
        {"model": "tinycnn", "dataset": "synthetic", "method": "magnitude", "ratio": 0.5}
        | {"epochs": 1, "train_limit": 64, "test_limit": 32, "samples_per_class": 2}
        | {"out": str(tmp_path / "run"), "no_progress": True}
    )
    with pytest.raises(RunFailed, match="the network is disconnected"):
        experiment.run(config)
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert failed["disconnected"] is True
    assert failed["chance_accuracy"] == pytest.approx(1 / 10)
