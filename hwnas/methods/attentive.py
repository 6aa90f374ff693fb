"""Pareto-attentive sampling (AttentiveNAS, Wang et al., CVPR 2021).

The sandwich rule, with each random subnet replaced by the best (``pareto="best"``,
AttentiveNAS's BestUp) or the worst (``"worst"``, WorstUp) of ``candidates`` subnets of
one cost: a MAC level is drawn uniformly (one of ten quantile bins of the space's MACs,
hwnas's counter standing in for AttentiveNAS's FLOPs), ``candidates`` archs of that bin
are drawn, and each is rated by the supernet's own loss on the step's batch (against the
largest subnet's soft predictions, or the labels without distillation), which is
AttentiveNAS's minibatch-loss rating.

Simplified: AttentiveNAS's other rating, an accuracy predictor fitted on evaluated
subnets, needs accuracies that a supernet trained from scratch does not have yet; the
loss rating costs ``candidates`` forward passes per random subnet instead, which the
strategies benchmark's equal-time budget charges to this method.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import model_input
from hwnas.methods.base import TrainingMethod, distill_loss, label_loss
from hwnas.methods.sandwich import sandwich_archs

POOL = 2000  # archs per space from which each bin's candidates are drawn
BINS = 10


class Attentive(TrainingMethod):
    name = "attentive"

    def __init__(self, space, cfg, net) -> None:
        super().__init__(space, cfg, net)
        from hwnas.ops import count_batch

        pool = space.sample(POOL, np.random.default_rng(12345))
        macs = count_batch(pool, space)[:, 0].astype(float)
        edges = np.quantile(macs, np.linspace(0, 1, BINS + 1)[1:-1])
        level = np.searchsorted(edges, macs)
        self.bins = [[a for a, b in zip(pool, level) if b == i] for i in range(BINS)]
        self.bins = [b for b in self.bins if b]

    def pick(self, net, x, y, target, rng) -> "object":
        """The best (or worst) of ``candidates`` archs of one MAC bin, by batch loss."""
        pool = self.bins[int(rng.integers(len(self.bins)))]
        cands = [pool[int(i)] for i in rng.choice(len(pool), self.cfg.candidates,
                                                  replace=len(pool) < self.cfg.candidates)]
        losses = []
        with torch.no_grad():
            for arch in cands:
                net.set_active(arch)
                logits = net(model_input(x, arch.r))
                losses.append(float(distill_loss(logits, target) if target is not None
                                    else F.cross_entropy(logits, y)))
        i = int(np.argmin(losses) if self.cfg.pareto == "best" else np.argmax(losses))
        return cands[i]

    def step(self, net, x, y, rng, epoch) -> float:
        big, small = sandwich_archs(self.space, 0, rng, "all", self.cfg.smallest_resolution)
        loss, logits = label_loss(net, big, x, y, self.cfg)
        loss.backward()
        shown, soft = float(loss.detach()), F.softmax(logits.detach(), dim=1)
        target = soft if self.cfg.distill else None
        picks = [self.pick(net, x, y, target, rng) for _ in range(self.cfg.n_random)]
        for arch in [small] + picks:
            if target is None:
                loss, _ = label_loss(net, arch, x, y, self.cfg)
            else:
                net.set_active(arch)
                loss = distill_loss(net(model_input(x, arch.r)), soft)
            loss.backward()
        return shown
