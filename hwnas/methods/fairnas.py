"""Strict fairness (FairNAS, Chu et al., ICCV 2021).

Each step trains ``m`` subnets, ``m`` the largest number of choices of any gene, built so
that every gene takes each of its choices once (one random permutation per gene), and
takes one optimiser step on their summed gradients: every choice of every layer is
trained equally often and in the same steps. Labels only, no distillation, as FairNAS.

Simplified: FairNAS's layers all have the same number of choices and no depth. Here a
gene with fewer choices than ``m`` repeats a second permutation, and a block beyond its
stage's drawn depth is not run, so blocks deeper than the smallest depth are trained
less often than the others (as in any elastic-depth space).
"""

from __future__ import annotations

import numpy as np

from hwnas.methods.base import TrainingMethod, label_loss
from hwnas.space import Arch


class FairNAS(TrainingMethod):
    name = "fairnas"

    def archs(self, rng: np.random.Generator) -> list[Arch]:
        return [self.space.decode(g) for g in self.genes(rng)]

    def genes(self, rng: np.random.Generator) -> np.ndarray:
        """``m`` rows of genes; each column is a permutation of its gene's choices."""
        hi = np.asarray(self.space.bounds[1])
        m = int(hi.max()) + 1
        columns = []
        for top in hi:
            order = np.concatenate([rng.permutation(int(top) + 1)
                                    for _ in range(-(-m // (int(top) + 1)))])
            columns.append(order[:m])
        return np.stack(columns, axis=1)

    def step(self, net, x, y, rng, epoch) -> float:
        losses = []
        for arch in self.archs(rng):
            loss, _ = label_loss(net, arch, x, y, self.cfg)
            loss.backward()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))
