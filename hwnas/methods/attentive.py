"""Pareto-attentive sampling (AttentiveNAS, Wang et al., CVPR 2021).

The sandwich rule, with each random subnet replaced by the best (``pareto="best"``,
AttentiveNAS's BestUp) or the worst (``"worst"``, WorstUp) of ``candidates`` subnets of
one cost: a cost level is drawn uniformly (one of ten quantile bins of the space's cost),
``candidates`` archs of that level are drawn and rated, and the best or worst is trained.

- Cost (``pareto_cost``): ``macs`` (hwnas's counter, AttentiveNAS's FLOPs) or
  ``latency:DEVICE``, the device's latency predictor (``hwnas predictor fit``, read from
  ``lut_dir``), so the levels are latency levels of the device searched for.
- Rating (``pareto_rating``): ``loss``, the supernet's own loss on the step's batch (against
  the largest subnet's soft predictions, or the labels without distillation), which is
  AttentiveNAS's minibatch-loss rating; or ``acc-table:PATH``, an accuracy predictor fitted
  on measured accuracies (Parquet/CSV with ``arch`` and ``acc``, as ``hwnas search
  --accuracy-table`` reads), AttentiveNAS's predictor rating.

Simplified: AttentiveNAS fits its accuracy predictor on subnets of a supernet trained
before; a supernet trained from scratch here has none, so the predictor rating needs a
table from elsewhere (an earlier supernet's evaluations), and ``loss`` is the default. The
loss rating costs ``candidates`` forward passes per random subnet, which the strategies
benchmark's equal-time budget charges to this method.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import model_input
from hwnas.methods.base import distill_loss
from hwnas.methods.sandwich import Sandwich, sandwich_archs

POOL = 2000  # archs per space from which each bin's candidates are drawn
BINS = 10


class Attentive(Sandwich):
    name = "attentive"

    def __init__(self, space, cfg, net) -> None:
        super().__init__(space, cfg, net)
        pool = space.sample(POOL, np.random.default_rng(12345))
        cost = pool_cost(pool, space, cfg)
        edges = np.quantile(cost, np.linspace(0, 1, BINS + 1)[1:-1])
        level = np.searchsorted(edges, cost)
        self.bins = [[a for a, b in zip(pool, level) if b == i] for i in range(BINS)]
        self.bins = [b for b in self.bins if b]
        self.accuracy = None
        if cfg.pareto_rating.startswith("acc-table:"):
            from hwnas.errors import HwnasError
            from hwnas.search.surrogate import AccuracySurrogate
            from hwnas.train import TrainError

            try:
                self.accuracy = AccuracySurrogate.from_table(
                    cfg.pareto_rating.partition(":")[2], space, cfg.seed)
            except HwnasError as exc:
                raise TrainError(f"--pareto-rating {cfg.pareto_rating}: {exc}") from None

    def pick(self, net, x, y, target, rng) -> "object":
        """The best (or worst) of ``candidates`` archs of one cost level: by the accuracy
        predictor, or by the supernet's loss on the batch (a lower loss is better)."""
        pool = self.bins[int(rng.integers(len(self.bins)))]
        cands = [pool[int(i)] for i in rng.choice(len(pool), self.cfg.candidates,
                                                  replace=len(pool) < self.cfg.candidates)]
        if self.accuracy is not None:
            score = np.asarray(self.accuracy(cands), dtype=float)
        else:
            with torch.no_grad():
                score = []
                for arch in cands:
                    net.set_active(arch)
                    logits = net(model_input(x, arch.r))
                    score.append(-float(distill_loss(logits, target) if target is not None
                                        else F.cross_entropy(logits, y)))
        return cands[int(np.argmax(score) if self.cfg.pareto == "best" else np.argmin(score))]

    def archs(self, rng, epoch):
        """Largest and smallest only; the others are picked once the batch is seen."""
        return sandwich_archs(self.space, 0, rng, "all", self.cfg.smallest_resolution)

    def students(self, net, x, y, target, rng, archs):
        return archs + [self.pick(net, x, y, target, rng) for _ in range(self.cfg.n_random)]


def pool_cost(pool, space, cfg) -> np.ndarray:
    """Each arch's cost: MACs, or the latency ``cfg.pareto_cost`` names, predicted."""
    if cfg.pareto_cost == "macs":
        from hwnas.ops import count_batch

        return count_batch(pool, space)[:, 0].astype(float)
    from hwnas.errors import HwnasError
    from hwnas.predictor import device_predictor
    from hwnas.train import TrainError

    device = cfg.pareto_cost.partition(":")[2]
    try:
        predictor, _ = device_predictor(device, space, cfg.lut_dir, allow_drift=True)
    except HwnasError as exc:
        raise TrainError(f"--pareto-cost {cfg.pareto_cost}: {exc}") from None
    return np.asarray(predictor.predict(pool), dtype=float)
