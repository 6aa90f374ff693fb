"""The search as a pymoo problem: the space's integer encoding, with operators that keep
every candidate a valid, canonical arch.

Module-level classes (importable, picklable, testable alone): :class:`ArchProblem` asks
the :class:`~hwnas.search.evaluator.Evaluator` for objective values; sampling, mutation,
crossover and repair are the space's own (:mod:`hwnas.encoding`), so the search and
``SearchSpace.sample/mutate/crossover`` make the same moves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hwnas import encoding
from hwnas.search.config import SearchError
from hwnas.space import SearchSpace

try:
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.core.sampling import Sampling
except ImportError:  # pragma: no cover - pymoo is the 'search' extra
    raise SearchError("search needs pymoo: pip install 'hwnas[search]'") from None


class ArchProblem(Problem):
    """Minimise the evaluator's objectives (accuracy negated) under its budget constraint;
    with ``accuracy_override`` (NAT's surrogate) accuracy comes from it and nothing is
    archived. ``limit``: stop asking for accuracy once that many archs were evaluated."""

    def __init__(self, evaluator, r_genes: np.ndarray, limit: int | None = None,
                 accuracy_override=None) -> None:
        space = evaluator.space
        lo, hi = space.bounds
        super().__init__(n_var=space.n_var, n_obj=len(evaluator.objectives),
                         n_ieq_constr=1 if evaluator.budget_ms is not None else 0,
                         xl=lo, xu=hi, vtype=int)
        self.evaluator, self.r_genes = evaluator, r_genes
        self.limit, self.accuracy_override = limit, accuracy_override

    def _evaluate(self, X, out, *args, **kwargs):
        ev, space = self.evaluator, self.evaluator.space
        X = encoding.canonical(space, X, self.r_genes)
        if self.accuracy_override is None:
            F, G = ev(X, self.limit)
        else:
            cheap = ev.cheap(X)
            ok = ev.feasible(cheap, len(X))
            acc = np.where(ok, self.accuracy_override([space.decode(x) for x in X]), 0.0) \
                if ev.has_acc else np.zeros(len(X))
            F, G = ev.matrix(cheap, acc), ev.constraint(cheap)
        out["F"] = F
        if G is not None:
            out["G"] = G


class ArchSampling(Sampling):
    """Uniform over every gene (OFA's sampler), then canonical."""

    def __init__(self, space: SearchSpace, r_genes: np.ndarray) -> None:
        super().__init__()
        self.space, self.r_genes = space, r_genes

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        return encoding.sample(self.space, n_samples, random_state, self.r_genes)


class ArchMutation(Mutation):
    """Redraw each gene with probability ``rate`` to a different value."""

    def __init__(self, space: SearchSpace, rate: float) -> None:
        super().__init__()
        self.space, self.rate = space, rate

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        return encoding.mutate(self.space, X, self.rate, random_state)


class ArchCrossover(Crossover):
    """Uniform crossover of two parents into two children (with probability ``prob``)."""

    def __init__(self, prob: float = 0.9) -> None:
        super().__init__(2, 2, prob=prob)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        return np.stack(encoding.crossover(X[0], X[1], random_state))


class CanonicalRepair(Repair):
    """Genes past each stage's depth zeroed, the resolution gene on an allowed value."""

    def __init__(self, space: SearchSpace, r_genes: np.ndarray) -> None:
        super().__init__()
        self.space, self.r_genes = space, r_genes

    def _do(self, problem, X, **kwargs):
        return encoding.canonical(self.space, X, self.r_genes)


def operators(space: SearchSpace, r_genes: np.ndarray) -> dict[str, Any]:
    """The operators every pymoo algorithm here uses (keyword arguments of its class)."""
    return {"sampling": ArchSampling(space, r_genes), "crossover": ArchCrossover(prob=0.9),
            "mutation": ArchMutation(space, rate=2.0 / space.n_var),
            "repair": CanonicalRepair(space, r_genes), "eliminate_duplicates": True}


__all__ = ["ArchCrossover", "ArchMutation", "ArchProblem", "ArchSampling", "CanonicalRepair",
           "operators"]
