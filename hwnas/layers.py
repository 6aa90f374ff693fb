"""Static building blocks: plain Conv2d / BatchNorm2d / Linear, nothing elastic.

These are what a subnet is made of once cut out of the supernet, what each op of the
lookup table builds on its own, and what the exporters see. Keeping them free of elastic
code is what makes exported graphs clean and op timings honest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reachable_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """The part of a same-padded kernel that can touch a map of side ``size``.

    Taps more than ``size - 1`` from the centre only ever multiply the zero padding, so the
    centre ``2*size - 1`` square (same padding for it) gives the same output and the same
    gradients. On CPU the depthwise backward of a 7x7 kernel on a 2x2 map is about 3x
    slower than that of its 3x3 centre; the last stages of small inputs are such maps."""
    k, reach = weight.shape[-1], 2 * size - 1
    if k <= reach:
        return weight
    start = (k - reach) // 2
    return weight[:, :, start:start + reach, start:start + reach]


def same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int | tuple = 1, groups: int = 1,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """A same-padded convolution with only the reachable part of ``weight``."""
    w = reachable_kernel(weight, max(x.shape[-2:]))
    return F.conv2d(x, w, bias, stride, w.shape[-1] // 2, 1, groups)


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "hswish":
        return nn.Hardswish()
    if name == "swish":
        return nn.SiLU()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; allowed: relu, hswish, swish, none")


class ConvBNAct(nn.Module):
    """Conv (same padding), optional BatchNorm, optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str = "none", bn: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        # Training only: eval mode, export and timing run the declared kernel, and the
        # Conv2d module (and hooks on it) runs whenever cropping would change nothing.
        if self.training and reachable_kernel(conv.weight, max(x.shape[-2:])) is not conv.weight:
            return self.act(self.bn(same_conv(x, conv.weight, conv.stride, conv.groups,
                                              conv.bias)))
        return self.act(self.bn(conv(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: mean pool, reduce (ReLU), expand, hard sigmoid."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(s))))


class MultiPathDepthwise(nn.Module):
    """MixPath's multi-path layer: the depthwise convolutions of several kernel sizes on one
    input, summed, then one BatchNorm and the activation."""

    def __init__(self, channels: int, kernels: tuple[int, ...], stride: int, act: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, k, stride, k // 2,
                                              groups=channels, bias=False) for k in kernels])
        self.bn = nn.BatchNorm2d(channels)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs[0](x)
        for conv in self.convs[1:]:
            y = y + conv(x)
        return self.act(self.bn(y))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent when ``expand_conv`` is False), depthwise
    kxk (with ``paths``, the sum of depthwise convolutions of those sizes), optional SE, 1x1
    linear projection, identity shortcut when ``residual``."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, act: str,
                 se_mid: int = 0, residual: bool = False, expand_conv: bool = True,
                 paths: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.inverted_bottleneck = ConvBNAct(cin, mid, 1, act=act) if expand_conv else None
        self.depth_conv = MultiPathDepthwise(mid, paths, stride, act) if paths else \
            ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, se_mid) if se_mid else None
        self.point_linear = ConvBNAct(mid, cout, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        y = self.depth_conv(y)
        if self.se is not None:
            y = self.se(y)
        y = self.point_linear(y)
        return x + y if self.residual else y


class FeatureMix(nn.Module):
    """Global average pool, then a 1x1 conv (no bias, no BN) and h-swish."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x.mean((2, 3), keepdim=True)))


class Classifier(nn.Module):
    """Flatten and a linear layer (dropout only while training)."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(torch.flatten(x, 1)))
