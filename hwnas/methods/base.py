"""What a supernet training method is, to the training loop in :mod:`hwnas.train`.

The loop owns everything methods share (data order, augmentation, learning-rate schedule,
gradient sync and clipping, checkpoints, resume); a method decides only what one step
trains: which subnets, on which targets. Each method is its own module, registered by
name in :mod:`hwnas.methods`, and chosen with ``hwnas train --method``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import model_input

if TYPE_CHECKING:
    from hwnas.space import Arch, SearchSpace
    from hwnas.supernet import Supernet
    from hwnas.train import TrainConfig


class TrainingMethod:
    """One step's work: :meth:`step` runs forward and backward (gradients accumulate; the
    loop takes the optimiser step), :meth:`after_step` follows the optimiser step. State
    a method keeps between steps goes through :meth:`state_dict` into the checkpoint, so
    resuming reproduces the uninterrupted run."""

    name = ""

    def __init__(self, space: "SearchSpace", cfg: "TrainConfig", net: "Supernet") -> None:
        self.space, self.cfg = space, cfg

    def step(self, net: "Supernet", x: torch.Tensor, y: torch.Tensor,
             rng: np.random.Generator, epoch: int) -> float:
        """Forward and backward for one batch; returns the loss to show."""
        raise NotImplementedError

    def after_step(self, net: "Supernet") -> None:
        """After the optimiser step (e.g. a moving-average update)."""

    def begin_epoch(self, net: "Supernet", epoch: int) -> bool:
        """Before an epoch's first step. True when it re-ordered the weights (the loop then
        drops the optimiser's momentum, which would point at the old order)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rating_weights(self, net: "Supernet") -> dict[str, torch.Tensor] | None:
        """The weights subnets are rated with, when not the trained ones (Pi-NAS: the mean
        teacher); saved in the checkpoint beside them."""
        return None


def label_loss(net: "Supernet", arch: "Arch", x: torch.Tensor, y: torch.Tensor,
               cfg: "TrainConfig") -> tuple[torch.Tensor, torch.Tensor]:
    """``arch`` on the batch at its resolution, against the labels: (loss, logits)."""
    net.set_active(arch)
    logits = net(model_input(x, arch.r))
    return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits


def distill_loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """KL divergence to a teacher's soft predictions (in-place distillation)."""
    return F.kl_div(F.log_softmax(logits, 1), soft, reduction="batchmean")


class batch_statistics:
    """Run ``net`` on each batch's own BN statistics without touching its running ones
    (train mode, momentum 0): for networks that only produce targets or ratings."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.bns = [m for m in net.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> torch.nn.Module:
        self.saved = (self.net.training, [m.momentum for m in self.bns])
        self.net.train()
        for m in self.bns:
            m.momentum = 0.0
        return self.net

    def __exit__(self, *exc) -> None:
        training, momenta = self.saved
        for m, mom in zip(self.bns, momenta):
            m.momentum = mom
        self.net.train(training)
