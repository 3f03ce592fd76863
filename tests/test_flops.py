"""Forward FLOPs counted from the mask, against hand counts."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jpanning import flops, masks, models
from jpanning.errors import JPanningError


def test_lenet5_dense_and_masked_flops_by_hand():
    model = models.create_model("lenet5", 10)
    variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
    prunable = masks.prunable_tree(variables["params"])
    # Output positions per image: conv 5x5 SAME on 28x28 -> 28*28; conv 5x5 VALID on the
    # pooled 14x14 -> 10*10; dense layers -> 1.
    shapes = {
        "Conv_0": ((5, 5, 1, 6), 784),
        "Conv_1": ((5, 5, 6, 16), 100),
        "Dense_0": ((400, 120), 1),
        "Dense_1": ((120, 84), 1),
        "Dense_2": ((84, 10), 1),
    }
    # Keep exactly k weights of each layer, k chosen by hand.
    kept = {"Conv_0": 7, "Conv_1": 50, "Dense_0": 300, "Dense_1": 20, "Dense_2": 84}
    mask_tree = jax.tree.map(np.ones_like, variables["params"])
    for name, k in kept.items():
        m = np.zeros(shapes[name][0], np.float32).ravel()
        m[:k] = 1
        mask_tree[name]["kernel"] = m.reshape(shapes[name][0])

    result = flops.forward_flops(model, variables, mask_tree, prunable, (28, 28, 1))

    dense = 2 * (150 * 784 + 2400 * 100 + 48000 + 10080 + 840)
    remaining = 2 * (7 * 784 + 50 * 100 + 300 + 20 + 84)
    assert result["dense"] == dense == 833_040
    assert result["remaining"] == remaining
    assert result["fraction"] == pytest.approx(remaining / dense)
    assert result["layers"]["Conv_1/kernel"] == {
        "positions": 100,
        "dense": 2 * 2400 * 100,
        "remaining": 2 * 50 * 100,
    }
    # Biases are not prunable and not counted.
    assert set(result["layers"]) == {f"{n}/kernel" for n in shapes}


def test_strided_conv_positions_in_a_model_defined_here():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", name="down")(x)
            x = nn.Conv(3, (1, 1), name="mix")(x)
            return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))

    model = Net()
    variables = model.init(jax.random.key(0), np.zeros((1, 9, 9, 2), np.float32))
    prunable = masks.prunable_tree(variables["params"])
    ones = masks.ones_like(variables["params"])
    result = flops.forward_flops(model, variables, ones, prunable, (9, 9, 2))
    # 9x9 with stride 2 and SAME padding -> 5x5 outputs.
    assert result["layers"]["down/kernel"]["positions"] == 25
    assert result["layers"]["mix/kernel"]["positions"] == 25
    assert result["layers"]["head/kernel"]["positions"] == 1
    assert result["dense"] == 2 * (3 * 3 * 2 * 4 * 25 + 4 * 3 * 25 + 75 * 2)
    assert result["fraction"] == 1.0


def test_kernel_outside_any_module_is_refused():
    model = models.create_model("lenet5", 10)
    variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
    params = dict(variables["params"]) | {"stray": {"kernel": np.ones((3, 3), np.float32)}}
    prunable = masks.prunable_tree(params)
    with pytest.raises(JPanningError, match="stray/kernel"):
        flops.forward_flops(model, variables, params, prunable, (28, 28, 1))


def test_layer_order_follows_the_forward_pass_not_the_sorted_params():
    model = models.create_model("resnet32", 10)  # 15 blocks: BasicBlock_10 sorts before _2
    variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
    order = flops.prunable_layer_order(
        model, variables, masks.prunable_tree(variables["params"]), (32, 32, 3)
    )
    assert order[0] == "Conv_0/kernel" and order[-1] == "Dense_0/kernel"
    blocks = [int(p.split("/")[0].split("_")[1]) for p in order[1:-1]]
    assert blocks == sorted(blocks) == [b for b in range(15) for _ in (0, 1)]
    assert len(order) == 1 + 30 + 1  # stem, two convs per block, classifier (option-A shortcuts)
