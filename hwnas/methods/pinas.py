"""Cross-path learning with a mean teacher (Pi-NAS, Peng et al., ICCV 2021).

Each step draws two random subnets, a and b. Both learn the labels, and each also learns
the other's predictions as the mean teacher makes them: the student's path a is pulled
towards the teacher's path b and vice versa (KL divergence, weight ``consistency``), which
Pi-NAS argues damps the feature shift between paths. The teacher is an exponential moving
average of the supernet's weights (decay ``ema_decay`` per step; its BN statistics are
copied), kept in the checkpoint, and it is the network subnets are rated with.

Simplified: Pi-NAS's consistency is a contrastive loss on projected features; here it is
on the output distributions (no projection head, which would have to be sized per
space), and the two paths are drawn uniformly rather than from its sampler.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from hwnas.data import model_input
from hwnas.methods.base import TrainingMethod, distill_loss, label_loss


class PiNAS(TrainingMethod):
    name = "pinas"

    def __init__(self, space, cfg, net) -> None:
        super().__init__(space, cfg, net)
        self.teacher = copy.deepcopy(net)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def step(self, net, x, y, rng, epoch) -> float:
        a, b = self.space.sample(2, rng)
        with torch.no_grad():  # the teacher's batch statistics, not its running ones
            self.teacher.train()
            soft = {}
            for arch in (a, b):
                self.teacher.set_active(arch)
                soft[arch.key] = F.softmax(self.teacher(model_input(x, arch.r)), dim=1)
        shown = []
        for arch, other in ((a, b), (b, a)):
            loss, logits = label_loss(net, arch, x, y, self.cfg)
            loss = loss + self.cfg.consistency * distill_loss(logits, soft[other.key])
            loss.backward()
            shown.append(float(loss.detach()))
        return sum(shown) / 2

    @torch.no_grad()
    def after_step(self, net) -> None:
        d = self.cfg.ema_decay
        for t, s in zip(self.teacher.parameters(), net.parameters()):
            t.mul_(d).add_(s.detach(), alpha=1 - d)
        for t, s in zip(self.teacher.buffers(), net.buffers()):
            t.copy_(s)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])

    def rating_weights(self, net) -> dict:
        return self.teacher.state_dict()
