"""Flax models: LeNet-300-100, LeNet-5, VGG-11/16/19 (BN), CIFAR ResNet-20/32/56, a tiny CNN.

Every model is a ``flax.linen.Module`` called as ``model.apply(variables, x, train=...)`` on
NHWC float inputs. Input channels follow the data; ``num_classes`` is a constructor argument.
All convolutions go through :func:`conv` and :func:`jpanning.cpu.conv_general_dilated`, the
one place where a faster convolution is chosen per backend and shape.

CIFAR ResNets follow He et al. (2016, section 4.2): a 3x3 stem, three stages of ``n`` basic
blocks (6n+2 layers) with widths ``(w, 2w, 4w)``, ``w = 16`` by default. Shortcuts where the
shape changes are either option **A** (parameter-free: subsample by 2 and zero-pad channels,
the paper's CIFAR choice, 0.27M parameters for ResNet-20) or option **B** (1x1 convolution +
BatchNorm, as in the Panning authors' code). ``resnet20_panning`` is the Panning authors'
ResNet-20: widths 32/64/128 with 1x1 shortcuts (1.08M prunable weights).

VGG follows the CIFAR variant used by SynFlow/GraSP: 3x3 conv + BN + ReLU, 2x2 max-pools
(SAME padding, so 28x28 inputs work too), global average pooling, one linear classifier.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jpanning import cpu
from jpanning.errors import JPanningError

# He-normal (fan-in) for every kernel: the usual choice for ReLU networks in the
# pruning-at-initialization papers; biases start at zero (Flax's default).
KERNEL_INIT = nn.initializers.kaiming_normal()


def conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    use_bias: bool = False,
    padding: str | Sequence = "SAME",
    name: str | None = None,
) -> nn.Module:
    """The one convolution every model uses (NHWC, square kernel)."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        use_bias=use_bias,
        kernel_init=KERNEL_INIT,
        conv_general_dilated=cpu.conv_general_dilated,
        name=name,
    )


def dense(features: int, name: str | None = None) -> nn.Module:
    return nn.Dense(features, kernel_init=KERNEL_INIT, name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.Module:
    # PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), as in the reference code.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class LeNet300100(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998): a 300-100 MLP on the flattened image."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(300)(x))
        x = nn.relu(dense(100)(x))
        return dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (SAME) - pool - conv 16@5x5 (VALID) - pool - 120 - 84 - classes."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(conv(6, 5, use_bias=True)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(conv(16, 5, use_bias=True, padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(120)(x))
        x = nn.relu(dense(84)(x))
        return dense(self.num_classes)(x)


VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


class VGG(nn.Module):
    """VGG with BatchNorm for small images (conv layers with bias, as in SynFlow's code)."""

    depth: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for item in VGG_CONFIGS[self.depth]:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            else:
                x = nn.relu(batch_norm(train)(conv(item, 3, use_bias=True)(x)))
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes)(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity, option-A or option-B shortcut."""

    features: int
    strides: int = 1
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(batch_norm(train)(conv(self.features, 3, self.strides)(x)))
        y = batch_norm(train)(conv(self.features, 3)(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                x = x[:, :: self.strides, :: self.strides, :]
                pad = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
            else:
                x = batch_norm(train, name="shortcut_bn")(
                    conv(self.features, 1, self.strides, name="shortcut_conv")(x)
                )
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32-like images (He et al. 2016, section 4.2)."""

    depth: int = 20
    num_classes: int = 10
    width: int = 16
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise JPanningError(f"CIFAR ResNet depth {self.depth} is not 6n+2")
        if self.shortcut not in ("A", "B"):
            raise JPanningError(f"unknown ResNet shortcut {self.shortcut!r}; choose from: A, B")
        n = (self.depth - 2) // 6
        x = nn.relu(batch_norm(train)(conv(self.width, 3)(x)))
        for stage in range(3):
            for block in range(n):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.shortcut)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes)(x)


class TinyCNN(nn.Module):
    """A two-conv network with BatchNorm for fast tests (not a benchmark model)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train)(conv(8, 3)(x)))
        x = nn.relu(conv(16, 3, 2, use_bias=True)(x))
        return dense(self.num_classes)(x.reshape(x.shape[0], -1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "vgg11": functools.partial(VGG, depth=11),
    "vgg16": functools.partial(VGG, depth=16),
    "vgg19": functools.partial(VGG, depth=19),
    "resnet20": functools.partial(CifarResNet, depth=20),
    "resnet32": functools.partial(CifarResNet, depth=32),
    "resnet56": functools.partial(CifarResNet, depth=56),
    "resnet20_panning": functools.partial(CifarResNet, depth=20, width=32, shortcut="B"),
    "tinycnn": TinyCNN,
}


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model('resnet20', 10, shortcut='B')``."""
    if name not in MODELS:
        raise JPanningError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initialise ``{'params': ..., 'batch_stats': ...}`` for inputs of shape (H, W, C).

    ``batch_stats`` is an empty dict for models without BatchNorm, so callers never branch.
    """
    variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def make_apply_fn(model: nn.Module, batch_stats: Any, *, train: bool = False):
    """A pure ``apply_fn(params, x) -> logits`` for the scorers.

    ``train=True`` normalises with the batch's own statistics (the mode PyTorch pruning code
    scores in for SNIP/GraSP); ``train=False`` uses ``batch_stats`` (needed for SynFlow's
    all-ones input, whose batch variance is zero). Running-statistic updates are discarded.
    """

    def apply_fn(params, x):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
        return model.apply(variables, x, train=False)

    return apply_fn


def count_params(tree: Any) -> int:
    """Total number of scalars in a pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))
