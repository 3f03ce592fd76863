"""PyTorch ResNet-20 (options A and B) and VGG-19-BN for CIFAR shapes, loadable from Flax params.

The networks mirror ``jpanning.models.CifarResNet(depth=20)`` (``resnet20``: width 16,
option A; ``resnet20_panning``: width 32, option B) and ``jpanning.models.VGG(depth=19)``
layer for layer, so the scorers of both frameworks can be compared number for number on the
same weights:

* ResNet-20 (He et al. 2016, section 4.2): 3x3 stem with 16 channels, three stages of three
  basic blocks (16/32/64 channels), option-A shortcuts (subsample by 2, zero-pad channels),
  global average pooling, a linear classifier; convolutions without bias. The Panning
  authors' variant doubles the widths (32/64/128) and uses option-B shortcuts (1x1 conv + BN)
  where the shape changes.
* VGG-19-BN for 32x32 inputs (the SynFlow/GraSP variant): 3x3 convs with bias + BN + ReLU,
  2x2 max-pools, global average pooling, one linear layer.

A stride-2 3x3 convolution pads (0, 1) rather than (1, 1): that is what Flax's ``'SAME'``
does on even inputs, and it costs one padding op.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VGG19 = (
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
)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False):
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, 3, 1, padding=1, bias=bias)
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=0, bias=bias),
    )


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str = "A"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad = out_channels - in_channels
        self.shortcut = None
        if shortcut == "B" and (stride != 1 or self.pad):  # after conv2/bn2, as in Flax
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            x = self.shortcut(x)
        elif self.stride != 1 or self.pad:  # option A: parameter-free shortcut
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(x + y)


class ResNet20(nn.Module):
    def __init__(
        self, num_classes: int = 10, width: int = 16, blocks_per_stage: int = 3, shortcut="A"
    ):
        super().__init__()
        self.conv = conv3x3(3, width)
        self.bn = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for stage in range(3):
            for block in range(blocks_per_stage):
                out = width * 2**stage
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out, stride, shortcut))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


class VGG19BN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, channels = [], 3
        for item in VGG19:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=True),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


MODELS = {
    "resnet20": ResNet20,
    "resnet20_panning": lambda num_classes=10: ResNet20(num_classes, width=32, shortcut="B"),
    "vgg19": VGG19BN,
}
LAYER_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def flax_layers(name: str, tree) -> list[tuple[str, dict]]:
    """The Flax model's layers in forward order, as ``(kind, leaves)`` pairs.

    ``tree`` is the params of a ``jpanning.models`` network of :data:`MODELS`, or any pytree
    with their structure (e.g. scores). ``kind`` is 'conv', 'bn' or 'dense'.
    """
    if name in ("resnet20", "resnet20_panning"):
        out = [("conv", tree["Conv_0"]), ("bn", tree["BatchNorm_0"])]
        for b in range(9):
            block = tree[f"BasicBlock_{b}"]
            out += [
                ("conv", block["Conv_0"]),
                ("bn", block["BatchNorm_0"]),
                ("conv", block["Conv_1"]),
                ("bn", block["BatchNorm_1"]),
            ]
            if "shortcut_conv" in block:
                out += [("conv", block["shortcut_conv"]), ("bn", block["shortcut_bn"])]
    elif name == "vgg19":
        out = []
        for i in range(sum(1 for item in VGG19 if item != "M")):
            out += [("conv", tree[f"Conv_{i}"]), ("bn", tree[f"BatchNorm_{i}"])]
    else:
        raise ValueError(f"no torch reference for {name!r}; choose from: {', '.join(MODELS)}")
    return out + [("dense", tree["Dense_0"])]


def kernel_to_torch(kind: str, kernel) -> np.ndarray:
    """A Flax kernel in PyTorch layout: HWIO -> OIHW for convs, (in, out) -> (out, in)."""
    kernel = np.asarray(kernel, np.float32)
    return kernel.transpose(3, 2, 0, 1) if kind == "conv" else kernel.T


def from_flax(name: str, params, num_classes: int = 10) -> nn.Module:
    """Build the PyTorch model ``name`` holding the same weights as Flax ``params``."""
    model = MODELS[name](num_classes)
    modules = [m for m in model.modules() if isinstance(m, LAYER_TYPES)]
    layers = flax_layers(name, params)
    if len(modules) != len(layers):
        raise ValueError(f"{name}: {len(modules)} torch layers but {len(layers)} Flax layers")
    with torch.no_grad():
        for module, (kind, leaves) in zip(modules, layers):
            expected = {"conv": nn.Conv2d, "bn": nn.BatchNorm2d, "dense": nn.Linear}[kind]
            if not isinstance(module, expected):
                raise ValueError(f"{name}: layer order differs ({module} vs {kind})")
            if kind == "bn":
                module.weight.copy_(torch.from_numpy(np.array(leaves["scale"], np.float32)))
                module.bias.copy_(torch.from_numpy(np.array(leaves["bias"], np.float32)))
                continue
            weight = torch.from_numpy(kernel_to_torch(kind, leaves["kernel"]).copy())
            if weight.shape != module.weight.shape:
                raise ValueError(f"{name}: shape {tuple(weight.shape)} vs {module}")
            module.weight.copy_(weight)
            if module.bias is not None:
                module.bias.copy_(torch.from_numpy(np.array(leaves["bias"], np.float32)))
    return model
