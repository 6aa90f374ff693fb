"""The sandwich rule with in-place distillation (BigNAS, Yu et al. 2020; AttentiveNAS).

Each step trains the largest subnet on the labels, then the smallest (at a resolution
drawn per step, see :func:`sandwich_archs`) and ``n_random`` random subnets on the
largest's soft predictions, accumulating gradients for one optimiser step. hwnas's default
method.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch.nn.functional as F

from hwnas.data import model_input
from hwnas.methods.base import TrainingMethod, distill_loss, label_loss
from hwnas.space import Arch, SearchSpace


def sandwich_archs(space: SearchSpace, n_random: int, rng: np.random.Generator,
                   phase: str = "all", smallest_resolution: str = "random") -> list[Arch]:
    """Largest, smallest and ``n_random`` random archs, restricted to the elastic
    dimensions open in ``phase`` (kernel, depth, all).

    With ``smallest_resolution="random"`` the smallest arch takes a resolution drawn per
    step instead of the smallest one (``"min"``: BigNAS). Trained every step in one fixed
    context, the smallest subnet's weights specialise to it and the supernet rates it
    above its neighbours (on digits-hard, above three of the four next-larger subnets of
    the ranking benchmark, which stand-alone training ranks above it); a drawn resolution
    spreads that training over the contexts the smaller subnets share. Kendall tau against
    the mean of three stand-alone runs rose from 0.56 to 0.64-0.82 (three seeds)."""
    big = space.largest()
    small = space.smallest()
    archs = [space.sample(1, rng)[0] for _ in range(n_random)]
    if smallest_resolution == "random":
        r = space.resolutions[int(rng.integers(len(space.resolutions)))]
        small = space.at_resolution(small, r)
    if phase != "all":
        def restrict(a: Arch) -> Arch:  # closed dimensions stay at their largest
            return space.arch(dataclasses.replace(a, d=a.d if phase == "depth" else big.d,
                                                  e=big.e, w=big.w))

        small = restrict(small)
        archs = [restrict(a) for a in archs]
    return [big, small] + archs


def phase_of(epoch: int, cfg) -> str:
    """OFA's progressive shrinking: kernel, then depth, then every dimension."""
    if not cfg.progressive:
        return "all"
    third = cfg.epochs / 3
    return "kernel" if epoch < third else "depth" if epoch < 2 * third else "all"


def opens_widths(epoch: int, cfg) -> bool:
    """Whether ``epoch`` is the first of progressive shrinking's last phase, where expand
    ratios (and elastic stage widths) open: OFA sorts the channels by importance there, so
    the narrow choices start from the channels that matter."""
    return cfg.progressive and epoch > 0 and phase_of(epoch, cfg) == "all" \
        and phase_of(epoch - 1, cfg) != "all"


class Sandwich(TrainingMethod):
    name = "sandwich"

    def archs(self, rng: np.random.Generator, epoch: int) -> list[Arch]:
        return sandwich_archs(self.space, self.cfg.n_random, rng, phase_of(epoch, self.cfg),
                              self.cfg.smallest_resolution)

    def begin_epoch(self, net, epoch: int) -> bool:
        if not opens_widths(epoch, self.cfg):
            return False
        net.reorganize_channels()  # function-preserving: the widest net computes the same
        return True

    def students(self, net, x, y, target, rng, archs: list[Arch]) -> list[Arch]:
        """The subnets trained after the largest (AttentiveNAS replaces the random ones)."""
        return archs

    def step(self, net, x, y, rng, epoch) -> float:
        big, *rest = self.archs(rng, epoch)
        loss, logits = label_loss(net, big, x, y, self.cfg)
        loss.backward()
        shown, soft = float(loss.detach()), F.softmax(logits.detach(), dim=1)
        target = soft if self.cfg.distill else None
        for arch in self.students(net, x, y, target, rng, rest):
            if target is None:
                loss, _ = label_loss(net, arch, x, y, self.cfg)
            else:
                net.set_active(arch)
                loss = distill_loss(net(model_input(x, arch.r)), target)
            loss.backward()
        return shown
