"""Small building blocks shared by the models."""

from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 1, *, groups: int = 1, relu: bool = False,
            bias: bool = True) -> nn.Sequential:
    """Conv (same padding) + BatchNorm, optionally followed by ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
