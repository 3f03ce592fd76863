"""Models: parameter counts against the published ones, shapes, apply functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import masks as M
from jpanning import models
from jpanning.errors import JPanningError


def _shapes(name, input_shape, num_classes=10):
    model = models.create_model(name, num_classes)
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape)), jax.random.key(0))
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape)), variables)
    return variables["params"], logits


# Published totals (trainable parameters, BN affine included, running stats excluded):
# He et al. 2016 Table 6 (0.27M/0.46M/0.85M), the PyTorch CIFAR VGGs, LeCun et al. 1998.
@pytest.mark.parametrize(
    "name,input_shape,expected",
    [
        ("resnet20", (32, 32, 3), 269_722),
        ("resnet32", (32, 32, 3), 464_154),
        ("resnet56", (32, 32, 3), 853_018),
        ("vgg11", (32, 32, 3), 9_231_114),
        ("vgg16", (32, 32, 3), 14_728_266),
        ("vgg19", (32, 32, 3), 20_040_522),
        ("lenet300100", (28, 28, 1), 266_610),
        ("lenet5", (28, 28, 1), 61_706),
    ],
)
def test_parameter_counts_match_published(name, input_shape, expected):
    params, logits = _shapes(name, input_shape)
    assert models.count_params(params) == expected
    assert logits.shape == (2, 10)


def test_panning_resnet20_has_the_authors_prunable_count():
    params, _ = _shapes("resnet20_panning", (32, 32, 3))
    prunable = M.prunable_tree(params)
    n = sum(x.size for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if f)
    assert n == 1_081_440  # widths 32/64/128, 1x1 shortcuts, as in kangxiatao/RLPanning


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "lenet5", "lenet300100", "tinycnn"])
def test_grayscale_28x28_and_100_classes(name):
    _, logits = _shapes(name, (28, 28, 1), num_classes=100)
    assert logits.shape == (2, 100)


def test_option_a_has_no_shortcut_weights_and_option_b_has_two():
    a, _ = _shapes("resnet20", (32, 32, 3))
    model_b = models.create_model("resnet20", 10, shortcut="B")
    b = jax.eval_shape(lambda k: model_b.init(k, jnp.zeros((1, 32, 32, 3))), jax.random.key(0))
    names = [M.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(b["params"])[0]]
    assert sum("shortcut_conv/kernel" in n for n in names) == 2
    # 1x1 convs 16->32 and 32->64 plus two BatchNorms of 32 and 64 channels (scale, bias).
    extra = 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert models.count_params(b["params"]) - models.count_params(a) == extra


def test_apply_fn_modes_and_batch_stats_untouched():
    model = models.create_model("tinycnn", 3)
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) * 3 + 1
    train_fn = models.make_apply_fn(model, variables["batch_stats"], train=True)
    eval_fn = models.make_apply_fn(model, variables["batch_stats"], train=False)
    a, b = train_fn(variables["params"], x), eval_fn(variables["params"], x)
    assert a.shape == b.shape == (4, 3)
    assert not np.allclose(a, b)  # batch statistics differ from the initial running ones
    np.testing.assert_allclose(jax.jit(train_fn)(variables["params"], x), a, atol=1e-6)
    assert jax.tree.leaves(variables["batch_stats"])[0].sum() == 0.0  # mean still zero


def test_batch_stats_empty_without_batchnorm():
    model = models.create_model("lenet5", 10)
    assert models.init_variables(model, jax.random.key(0), (28, 28, 1))["batch_stats"] == {}


def test_unknown_model_and_bad_depth():
    with pytest.raises(JPanningError, match="unknown model 'resnet7'; choose from: lenet300100"):
        models.create_model("resnet7", 10)
    with pytest.raises(JPanningError, match="not 6n\\+2"):
        models.init_variables(models.CifarResNet(depth=21), jax.random.key(0), (8, 8, 3))
