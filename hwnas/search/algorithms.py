"""Search algorithms by name: one table (:data:`ALGORITHMS`) from name to what runs it.

``random`` (the baseline), ``nsga2``, ``nsga3``, ``moga`` (NSGA-II with MoGA's weighted
crowding) and ``nat`` (NAT's surrogate loop). Each takes a :class:`SearchRun` and spends
its ``evaluations`` accuracy evaluations; the pymoo ones run through pymoo's ``minimize``
with an :class:`EvaluationBudget` termination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pymoo.core.callback import Callback
from pymoo.core.termination import Termination

from hwnas import encoding
from hwnas.ops import encode_batch
from hwnas.registry import Registry
from hwnas.search.config import SearchConfig, SearchError
from hwnas.search.evaluator import AccuracyFn, Evaluator
from hwnas.search.problem import ArchProblem, operators
from hwnas.space import SearchSpace

ALGORITHMS: Registry = Registry("search algorithm", SearchError)


@dataclass
class SearchRun:
    """What an algorithm works with: the settings, the evaluator (which counts accuracy
    evaluations and archives everything), the accuracy source, the resolution genes it may
    use, a hook to call after each generation, and a log (NAT's iterations)."""

    cfg: SearchConfig
    evaluator: Evaluator
    accuracy: AccuracyFn | None
    r_genes: np.ndarray
    on_generation: Callable[[], None]
    log: list[dict[str, Any]] = field(default_factory=list)


class EvaluationBudget(Termination):
    """Stops a pymoo algorithm once ``budget`` accuracy evaluations are spent, or after
    ``max_stall`` generations that spent none (all candidates known or over the budget).
    Called once per generation, it also counts the evaluator's generations."""

    def __init__(self, evaluator: Evaluator, budget: int, max_stall: int = 30) -> None:
        super().__init__()
        self.evaluator, self.budget, self.max_stall = evaluator, budget, max_stall
        self.stall, self.last = 0, -1

    def _update(self, algorithm) -> float:
        ev = self.evaluator
        ev.generation += 1
        self.stall = self.stall + 1 if ev.count == self.last else 0
        self.last = ev.count
        return max(ev.count / self.budget, self.stall / self.max_stall)


class _EachGeneration(Callback):
    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self.hook = hook

    def notify(self, algorithm) -> None:
        self.hook()


class PymooSearch:
    """A pymoo algorithm (built by ``build``) run to the evaluation budget."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build

    def __call__(self, run: SearchRun) -> None:
        from pymoo.optimize import minimize

        cfg = run.cfg
        weights = [cfg.weights.get(o, 1.0) for o in cfg.objectives]
        algorithm = self.build(len(cfg.objectives), cfg.pop_size, run.evaluator.space,
                               run.r_genes, weights)
        minimize(ArchProblem(run.evaluator, run.r_genes, cfg.evaluations), algorithm,
                 EvaluationBudget(run.evaluator, cfg.evaluations), seed=cfg.seed,
                 callback=_EachGeneration(run.on_generation), verbose=False,
                 copy_algorithm=False, copy_termination=False)


def weighted_crowding(weights: Sequence[float]) -> Callable[..., np.ndarray]:
    """MoGA's crowding distance: each objective's normalised gap counts with its weight
    (MoGA weighs latency over accuracy to favour fast models along the front)."""
    w = np.asarray(weights, dtype=float)

    def crowding(F: np.ndarray, **kwargs) -> np.ndarray:
        n, m = F.shape
        d = np.zeros(n)
        for j in range(m):
            order = np.argsort(F[:, j], kind="mergesort")
            col = F[order, j]
            span = col[-1] - col[0]
            gap = np.full(n, np.inf)
            if span > 0 and n > 2:
                gap[1:-1] = (col[2:] - col[:-2]) / span
            d[order] += w[j] * gap if w[j] > 0 else 0.0
        return d

    return crowding


def _nsga2(n_obj: int, pop_size: int, space: SearchSpace, r_genes: np.ndarray,
           weights: Sequence[float] | None = None, **ops: Any):
    from pymoo.algorithms.moo.nsga2 import NSGA2

    return NSGA2(pop_size=pop_size, **{**operators(space, r_genes), **ops})


def _moga(n_obj: int, pop_size: int, space: SearchSpace, r_genes: np.ndarray,
          weights: Sequence[float] | None = None, **ops: Any):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    w = list(weights) if weights is not None else [1.0] * n_obj
    return NSGA2(pop_size=pop_size, survival=RankAndCrowding(
        crowding_func=weighted_crowding(w)), **{**operators(space, r_genes), **ops})


def _nsga3(n_obj: int, pop_size: int, space: SearchSpace, r_genes: np.ndarray,
           weights: Sequence[float] | None = None, **ops: Any):
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.util.ref_dirs import get_reference_directions

    parts = 1
    while math.comb(parts + 1 + n_obj - 1, n_obj - 1) <= pop_size:
        parts += 1
    ref = get_reference_directions("das-dennis", n_obj, n_partitions=parts)
    return NSGA3(ref_dirs=ref, pop_size=max(pop_size, len(ref)),
                 **{**operators(space, r_genes), **ops})


def make_algorithm(name: str, n_obj: int, pop_size: int, space: SearchSpace,
                   r_genes: np.ndarray, weights: Sequence[float] | None = None,
                   sampling: np.ndarray | None = None):
    """A pymoo algorithm by name, with operators that keep every candidate a valid arch
    (``sampling``: a starting population instead of random archs)."""
    search = ALGORITHMS.get(name)
    if not isinstance(search, PymooSearch):
        pymoo_ones = [n for n in ALGORITHMS if isinstance(ALGORITHMS.get(n), PymooSearch)]
        raise SearchError(f"{name!r} is not a pymoo algorithm; pymoo ones: {pymoo_ones}")
    extra = {} if sampling is None else {"sampling": sampling}
    return search.build(n_obj, pop_size, space, r_genes, weights, **extra)


def draw_random(evaluator: Evaluator, r_genes: np.ndarray, budget: int, seed: int,
                batch: int, on_generation: Callable[[], None], max_stall: int = 30,
                max_draws: int = 1 << 16) -> None:
    """Uniform samples, rejected when over the budget (which costs no accuracy
    evaluation). Under a tight budget most draws are rejected, so a round that finds
    nothing draws four times as many next time (up to ``max_draws``), as OFA's sampler
    redraws until it finds one."""
    space = evaluator.space
    rng = np.random.default_rng(seed)
    stall, draws = 0, batch
    while evaluator.count < budget and stall < max_stall:
        before = evaluator.count
        X = encoding.sample(space, draws, rng, r_genes)
        cheap = evaluator.cheap(X)
        ok = np.flatnonzero(evaluator.feasible(cheap, len(X)))[:batch]
        if len(ok):
            evaluator(X[ok], budget, {k: v[ok] for k, v in cheap.items()})
        else:
            draws = min(draws * 4, max_draws)
        evaluator.generation += 1
        stall = stall + 1 if evaluator.count == before else 0
        on_generation()


@ALGORITHMS.register("random")
def random_search(run: SearchRun) -> None:
    """The baseline: uniform archs within the budget, ``pop_size`` at a time."""
    draw_random(run.evaluator, run.r_genes, run.cfg.evaluations, run.cfg.seed,
                run.cfg.pop_size, run.on_generation)


ALGORITHMS.register("nsga2", PymooSearch(_nsga2))
ALGORITHMS.register("nsga3", PymooSearch(_nsga3))
ALGORITHMS.register("moga", PymooSearch(_moga))


def _pick_spread(F: np.ndarray, k: int, acc_col: int, lat_col: int) -> np.ndarray:
    """NAT's selection: split the latency range of the non-dominated candidates into
    ``k`` bins and take the most accurate (predicted) candidate of each."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    order = list(front) + [i for i in np.argsort(F[:, acc_col]) if i not in set(front)]
    lat = F[front, lat_col]
    edges = np.linspace(lat.min(), lat.max() + 1e-12, k + 1)
    chosen: list[int] = []
    for b in range(k):
        inside = [i for i in front if edges[b] <= F[i, lat_col] < edges[b + 1]]
        if inside:
            chosen.append(min(inside, key=lambda i: F[i, acc_col]))
    for i in order:
        if len(chosen) >= k:
            break
        if i not in chosen:
            chosen.append(int(i))
    return np.array(chosen[:k], dtype=int)


@ALGORITHMS.register("nat")
def nat(run: SearchRun) -> None:
    """NAT's loop: an initial archive of random archs within the budget; then per
    iteration an accuracy surrogate (RBF ensemble or boosted trees, whichever ranks better
    in cross-validation), NSGA-II on the surrogate seeded with the archive's best, the most
    promising candidates spread over latency evaluated for real, and optionally a few steps
    of supernet adaptation on the archive's best."""
    from pymoo.optimize import minimize
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    from hwnas.search.surrogate import AccuracySurrogate

    cfg, evaluator, accuracy, r_genes = run.cfg, run.evaluator, run.accuracy, run.r_genes
    on_generation, log = run.on_generation, run.log
    space = evaluator.space
    objs = evaluator.objectives
    acc_col = [o.kind for o in objs].index("acc")
    lat_col = next((j for j, o in enumerate(objs) if o.kind != "acc"), acc_col)
    # 1. initial archive: random archs within the budget
    draw_random(evaluator, r_genes, min(cfg.nat_initial, cfg.evaluations), cfg.seed,
                cfg.pop_size, on_generation)
    it = 0
    while evaluator.count < cfg.evaluations:
        archs, acc = evaluator.archive.evaluated(space)
        if len(acc) < 4:
            raise SearchError("nat found fewer than 4 archs within the budget to start its "
                              "surrogate from; raise the budget")
        surrogate = AccuracySurrogate(space, cfg.nat_surrogate, seed=cfg.seed + it).fit(
            archs, acc)
        # 2. many-objective search on the surrogate, seeded with the archive's best
        X_arch = encode_batch(archs, space)
        F_arch = evaluator.matrix(evaluator.cheap(X_arch), acc)
        ranked = np.concatenate(NonDominatedSorting().do(F_arch))
        seed_pop = X_arch[ranked[:cfg.pop_size]]
        rng = np.random.default_rng([cfg.seed, it])
        fill = encoding.sample(space, cfg.pop_size - len(seed_pop), rng, r_genes)
        problem = ArchProblem(evaluator, r_genes, accuracy_override=surrogate)
        algo = make_algorithm("nsga2", len(objs), cfg.pop_size, space, r_genes,
                              sampling=np.vstack([seed_pop, fill]))
        res = minimize(problem, algo, ("n_gen", cfg.nat_generations), seed=cfg.seed + it,
                       verbose=False)
        pop = res.pop
        X_c = encoding.canonical(space, pop.get("X"), r_genes)
        F_c = pop.get("F")
        G_c = pop.get("G")
        keys = {a.key for a in archs}
        fresh = [i for i, x in enumerate(X_c) if space.decode(x).key not in keys
                 and (G_c is None or G_c.size == 0 or G_c[i].max() <= 0)]
        if not fresh:  # the surrogate's front is all known: explore around it
            fresh_X = encoding.sample(space, cfg.nat_per_iteration, rng, r_genes)
        else:
            pick = _pick_spread(F_c[fresh], cfg.nat_per_iteration, acc_col, lat_col)
            fresh_X = X_c[fresh][pick]
        # 3. evaluate the chosen with the real accuracy; add to the archive
        predicted = surrogate.predict([space.decode(x) for x in fresh_X])
        evaluator.generation += 1
        before = evaluator.count
        evaluator(fresh_X, cfg.evaluations)
        log.append({"iteration": it, "archive": len(acc), "surrogate": surrogate.chosen,
                    "cv_kendall_tau": surrogate.cv_tau.get(surrogate.chosen, float("nan")),
                    "cv_tau_all": surrogate.cv_tau,
                    "evaluated": evaluator.count - before,
                    "predicted_acc_mean": float(np.mean(predicted))})
        # 4. optionally adapt the supernet towards the archive's distribution
        if cfg.nat_adapt_steps and hasattr(accuracy, "adapt"):
            top = [archs[i] for i in np.argsort(-acc)[:max(10, cfg.nat_per_iteration)]]
            accuracy.adapt(top, cfg.nat_adapt_steps, cfg.seed + it)
        on_generation()
        if evaluator.count == before:
            break
        it += 1


__all__ = ["ALGORITHMS", "EvaluationBudget", "PymooSearch", "SearchRun", "draw_random",
           "make_algorithm", "weighted_crowding"]
