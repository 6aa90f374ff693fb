"""Subnet accuracy from supernet weights, with batch-norm statistics recalibrated.

A subnet cut from the supernet inherits BN running statistics accumulated over *all*
subnets, which are wrong for it; as Once-for-All does, each subnet's BN statistics are
re-estimated on a few training batches (weights untouched) before top-1 is measured on the
validation split. Deterministic given a seed: the calibration batches are drawn from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from hwnas.data import Dataset, model_input
from hwnas.space import Arch
from hwnas.supernet import Supernet


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average
    over ``batches``; parameters are not changed. Returns ``net`` in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches
    net.train()
    for x in batches:
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return net.eval()


@torch.no_grad()
def top1(net: nn.Module, data: Dataset, resolution: int, batch_size: int = 256) -> float:
    net.eval()
    correct = 0
    for x, y in data.batches(batch_size, shuffle=False):
        correct += int((net(model_input(x, resolution)).argmax(1) == y).sum())
    return correct / len(data)


def calibration_batches(train: Dataset, n_batches: int, batch_size: int, seed: int
                        ) -> list[torch.Tensor]:
    """Training images as training saw them: with the set's augmentation (as OFA
    recalibrates with its training transforms), so BN statistics match the distribution
    the weights were trained on."""
    g, augment = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    out = []
    for i, (x, _) in enumerate(train.batches(batch_size, True, g, augment=augment)):
        if i >= n_batches:
            break
        out.append(x)
    return out


def subnet_accuracy(supernet: Supernet, archs: Sequence[Arch], train: Dataset, val: Dataset,
                    calib_batches: int = 8, batch_size: int = 128, seed: int = 0
                    ) -> np.ndarray:
    """Top-1 (0..1) of each arch on ``val`` after BN recalibration on ``train``."""
    base = calibration_batches(train, calib_batches, batch_size, seed)
    accs = []
    for arch in archs:
        net = supernet.subnet(arch)
        recalibrate_bn(net, [model_input(x, arch.r) for x in base])
        accs.append(top1(net, val, arch.r))
    return np.array(accs)
