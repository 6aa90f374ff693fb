"""Hardware-aware multi-objective search over a space's integer encoding (pymoo).

Vocabulary, top-down:

* :func:`search` runs one :class:`SearchConfig` into ``runs/<id>/`` and returns a
  :class:`SearchResult`; the CLI (``hwnas search``) is a thin layer over it.
* An :class:`Evaluator` turns candidate encodings into objective values: the cheap ones
  (``latency:<device>`` from that device's predictor, ``params``, ``macs``) for every
  candidate, the expensive one (``acc``) only for candidates that meet the budget, once per
  arch. Everything evaluated goes to an :class:`Archive` (Parquet).
* Algorithms by name: ``random`` (the baseline), ``nsga2``, ``nsga3``, ``moga`` (NSGA-II
  with MoGA's weighted crowding) and ``nat`` (NAT's loop: archive -> accuracy surrogate ->
  search on the surrogate -> evaluate the most promising -> archive).

Budgets are a constraint on one device's predicted latency (the largest budget); the best
arch under each budget is picked from the archive afterwards, so several budgets cost one
run. The search counts *accuracy evaluations* (the expensive part): ``evaluations`` of them.

Resume: every accuracy is kept in the archive. Algorithms are deterministic given the seed,
so a resumed run replays the same trajectory, answering accuracies from the archive instead
of the supernet, and continues past the point where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from hwnas.errors import HwnasError, check_settings, read_json
from hwnas.ops import count_batch, encode_batch
from hwnas.space import Arch, SearchSpace, get_space

ALGORITHMS = ("random", "nsga2", "nsga3", "moga", "nat")
OBJECTIVE_KINDS = ("acc", "latency", "params", "macs")
FLUSH_SECONDS = 2.0
AccuracyFn = Callable[[Sequence[Arch]], np.ndarray]


class SearchError(HwnasError, ValueError):
    """Bad search settings, or inputs the search cannot run with."""


# ------------------------------------------------------------------------ objectives
@dataclass(frozen=True)
class Objective:
    """One objective by name: ``acc``, ``latency:<device>``, ``params`` or ``macs``."""

    name: str
    kind: str
    device: str | None = None

    @property
    def maximize(self) -> bool:
        return self.kind == "acc"


def parse_objectives(names: str | Sequence[str]) -> list[Objective]:
    """Objectives from ``"acc,latency:cpu-onnxruntime,params"`` or a list of names."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    items = [n for n in items if n]
    allowed = "acc, latency:<device>, params, macs"
    if not items:
        raise SearchError(f"no objective given; choose from {allowed}")
    out = []
    for name in items:
        kind, _, device = name.partition(":")
        if kind not in OBJECTIVE_KINDS:
            raise SearchError(f"unknown objective {name!r}; allowed: {allowed}")
        if kind == "latency" and not device:
            raise SearchError(f"objective {name!r} needs a device: latency:<device>, e.g. "
                              f"latency:cpu-onnxruntime")
        if kind != "latency" and device:
            raise SearchError(f"objective {name!r}: only latency takes a device")
        out.append(Objective(name, kind, device or None))
    dup = sorted({o.name for o in out if [p.name for p in out].count(o.name) > 1})
    if dup:
        raise SearchError(f"objective(s) {dup} given twice")
    return out


# ---------------------------------------------------------------------------- config
@dataclass
class SearchConfig:
    """Validated settings of one search (saved as ``config.json`` in the run folder)."""

    space: str = "default"
    objectives: tuple[str, ...] = ("acc", "latency:cpu-onnxruntime")
    budgets_ms: tuple[float, ...] = ()
    budget_device: str | None = None    # default: the first latency objective's device
    algorithm: str = "nsga2"
    evaluations: int = 200              # accuracy evaluations (all evaluations without acc)
    pop_size: int = 40
    seed: int = 0
    weights: dict[str, float] = field(default_factory=dict)  # moga: objective -> weight
    resolutions: tuple[int, ...] = ()   # restrict the resolution gene (default: all)
    lut_dir: str = "lut"
    predictors: dict[str, str] = field(default_factory=dict)  # device -> predictor file
    checkpoint: str | None = None       # supernet weights for acc
    data: str = "digits"
    calib_batches: int = 4
    accuracy_table: str | None = None   # or: a surrogate fitted on measured accuracies
    accuracy: str | None = None         # or: a named source, e.g. ofa-predictor:PATH
    nat_initial: int = 40               # nat: archive size before the first iteration
    nat_per_iteration: int = 10         # nat: archs evaluated per iteration
    nat_generations: int = 25           # nat: generations of the search on the surrogate
    nat_surrogate: str = "auto"         # nat: rbf, xgboost or auto (the better ranker)
    nat_adapt_steps: int = 0            # nat: supernet fine-tuning steps per iteration

    def __post_init__(self) -> None:
        self.objectives = tuple(o.name for o in parse_objectives(self.objectives))
        self.budgets_ms = tuple(sorted(float(b) for b in self.budgets_ms))
        self.resolutions = tuple(int(r) for r in self.resolutions)
        check_settings([
            ("algorithm", self.algorithm in ALGORITHMS, f"one of {', '.join(ALGORITHMS)}"),
            ("evaluations", self.evaluations >= 2, ">= 2"),
            ("pop_size", self.pop_size >= 4, ">= 4"),
            ("budgets_ms", all(b > 0 and math.isfinite(b) for b in self.budgets_ms),
             "positive numbers of milliseconds"),
            ("calib_batches", self.calib_batches >= 1, ">= 1"),
            ("nat_initial", self.nat_initial >= 4, ">= 4"),
            ("nat_per_iteration", self.nat_per_iteration >= 1, ">= 1"),
            ("nat_generations", self.nat_generations >= 1, ">= 1"),
            ("nat_surrogate", self.nat_surrogate in SURROGATES + ("auto",),
             f"one of {', '.join(SURROGATES + ('auto',))}"),
            ("nat_adapt_steps", self.nat_adapt_steps >= 0, ">= 0")],
            SearchError, "search setting", self)
        objs = parse_objectives(self.objectives)
        names = {o.name for o in objs}
        bad = sorted(set(self.weights) - names)
        if bad:
            raise SearchError(f"weights for {bad}, which are not objectives; objectives: "
                              f"{sorted(names)}")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.weights.values()):
            raise SearchError(f"weights must be non-negative numbers, got {self.weights}")
        devices = [o.device for o in objs if o.kind == "latency"]
        if self.budgets_ms and self.budget_device is None:
            if not devices:
                raise SearchError("a budget needs a latency objective (latency:<device>)")
            self.budget_device = devices[0]
        if self.budget_device is not None and self.budget_device not in devices:
            raise SearchError(f"budget device {self.budget_device!r} is not among the latency "
                              f"objectives {devices}")
        sources = [n for n, v in (("--checkpoint", self.checkpoint),
                                  ("--accuracy-table", self.accuracy_table),
                                  ("--accuracy", self.accuracy)) if v]
        if len(sources) > 1:
            raise SearchError(f"give one accuracy source, not {' and '.join(sources)}")
        if self.accuracy is not None:
            kind, _, path = self.accuracy.partition(":")
            if kind not in ACCURACY_SOURCES or not path:
                raise SearchError(f"accuracy source {self.accuracy!r} is not one of "
                                  f"{', '.join(f'{k}:PATH' for k in ACCURACY_SOURCES)}")
        if self.algorithm == "nat" and "acc" not in names:
            raise SearchError("nat searches with an accuracy surrogate: add 'acc' to the "
                              "objectives")

    @property
    def parsed_objectives(self) -> list[Objective]:
        return parse_objectives(self.objectives)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SearchError(f"unknown search setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# --------------------------------------------------------------------------- accuracy
class SupernetAccuracy:
    """Top-1 of subnets from supernet weights, BN recalibrated (``hwnas.evaluate``)."""

    def __init__(self, checkpoint: str | Path, space: SearchSpace, data: str = "digits",
                 calib_batches: int = 4, seed: int = 0) -> None:
        from hwnas.data import load_dataset
        from hwnas.train import load_supernet

        self.net = load_supernet(checkpoint, space)
        self.train, self.val = load_dataset(data, max(space.resolutions), seed)
        if self.val.num_classes != space.num_classes:
            raise SearchError(f"data set {data!r} has {self.val.num_classes} classes, space "
                              f"{space.name!r} has {space.num_classes}")
        self.calib_batches, self.seed = calib_batches, seed

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        from hwnas.evaluate import subnet_accuracy

        return subnet_accuracy(self.net, archs, self.train, self.val,
                               calib_batches=self.calib_batches, seed=self.seed)

    def adapt(self, archs: Sequence[Arch], steps: int, seed: int) -> None:
        """NAT's supernet adaptation: a few steps on subnets drawn from ``archs``."""
        from hwnas.train import adapt_supernet

        adapt_supernet(self.net, archs, self.train, steps, seed=seed)


SURROGATES = ("rbf", "xgboost")
# Accuracy sources named by --accuracy KIND:PATH.
ACCURACY_SOURCES = ("ofa-predictor",)


def named_accuracy(spec: str, space: SearchSpace, resolutions: Sequence[int]) -> AccuracyFn:
    """An accuracy source from ``--accuracy``: ``ofa-predictor:PATH`` is Once-for-All's
    ImageNet accuracy predictor (no checkpoint, no data needed); checked against the
    resolutions the search may visit."""
    from hwnas.ofa import OfaAccuracyPredictor, OfaError

    kind, _, path = spec.partition(":")
    try:
        source = OfaAccuracyPredictor(path, space)
        source.check_resolutions(resolutions)
    except OfaError as exc:
        raise SearchError(f"--accuracy {kind}: {exc}") from None
    return source


class AccuracySurrogate:
    """Predicts accuracy from the encoding: a bagged ensemble of RBF interpolants (NAT)
    or of boosted trees; ``kind="auto"`` keeps whichever ranks better in cross-validation
    (Kendall tau), and the ensemble's spread is the uncertainty."""

    def __init__(self, space: SearchSpace, kind: str = "auto", members: int = 8,
                 seed: int = 0) -> None:
        if kind not in SURROGATES + ("auto",):
            raise SearchError(f"unknown surrogate {kind!r}; allowed: rbf, xgboost, auto")
        self.space, self.kind, self.members, self.seed = space, kind, members, seed
        self.models: list[Any] = []
        self.cv_tau: dict[str, float] = {}

    def _features(self, archs) -> np.ndarray:
        X = encode_batch(archs, self.space).astype(float)
        hi = np.maximum(self.space.bounds[1], 1)
        return X / hi

    def _fit_kind(self, kind: str, F: np.ndarray, y: np.ndarray, seed: int) -> list[Any]:
        rng = np.random.default_rng(seed)
        n = len(y)
        models = []
        for m in range(self.members):
            idx = rng.choice(n, size=max(2, int(round(0.8 * n))), replace=False) \
                if n >= 5 else np.arange(n)
            models.append(_fit_member(kind, F[idx], y[idx], seed + m))
        return models

    def fit(self, archs, acc: Sequence[float]) -> "AccuracySurrogate":
        F, y = self._features(archs), np.asarray(acc, dtype=float)
        if len(y) < 4:
            raise SearchError(f"an accuracy surrogate needs at least 4 evaluated archs, got "
                              f"{len(y)}")
        kinds = [k for k in SURROGATES if k != "xgboost" or _has_xgboost()] \
            if self.kind == "auto" else [self.kind]
        if len(kinds) > 1:
            self.cv_tau = {k: self._cv_tau(k, F, y) for k in kinds}
            self.chosen = max(kinds, key=lambda k: self.cv_tau[k])
        else:
            self.chosen = kinds[0]
        self.models = self._fit_kind(self.chosen, F, y, self.seed)
        return self

    def _cv_tau(self, kind: str, F: np.ndarray, y: np.ndarray, folds: int = 4) -> float:
        from scipy.stats import kendalltau

        order = np.random.default_rng(self.seed).permutation(len(y))
        pred = np.empty(len(y))
        for f in range(folds):
            test = order[f::folds]
            train = np.setdiff1d(order, test)
            models = [_fit_member(kind, F[train], y[train], self.seed + f)]
            pred[test] = _predict_members(models, F[test])[0]
        tau = kendalltau(pred, y).statistic
        return float(tau) if np.isfinite(tau) else -1.0

    def predict_with_uncertainty(self, archs) -> tuple[np.ndarray, np.ndarray]:
        if not self.models:
            raise SearchError("the accuracy surrogate is not fitted")
        return _predict_members(self.models, self._features(archs))

    def predict(self, archs) -> np.ndarray:
        return self.predict_with_uncertainty(archs)[0]

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.predict(archs)

    @classmethod
    def from_table(cls, path: str | Path, space: SearchSpace, seed: int = 0
                   ) -> "AccuracySurrogate":
        """Fit on measured accuracies: a Parquet/CSV table with ``arch`` (JSON) and ``acc``."""
        path = Path(path)
        try:
            df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        except Exception as exc:
            raise SearchError(f"cannot read accuracy table {path}: {exc}") from None
        missing = {"arch", "acc"} - set(df.columns)
        if missing:
            raise SearchError(f"accuracy table {path} lacks column(s) {sorted(missing)}; it "
                              f"needs 'arch' (JSON) and 'acc' (0..1)")
        archs = [space.arch(json.loads(a)) for a in df["arch"]]
        return cls(space, seed=seed).fit(archs, df["acc"].to_numpy(float))


def _has_xgboost() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgboost") is not None


def _fit_member(kind: str, F: np.ndarray, y: np.ndarray, seed: int) -> Any:
    if kind == "rbf":
        return _Rbf(F, y)
    import xgboost as xgb

    params = {"max_depth": 3, "eta": 0.1, "subsample": 0.8, "objective": "reg:squarederror",
              "seed": seed, "nthread": 1, "verbosity": 0}
    return xgb.train(params, xgb.DMatrix(F, label=y), num_boost_round=150)


class _Rbf:
    """A cubic RBF interpolant with a linear tail (NAT's choice) over the genes that vary
    in the sample; genes held constant (a budget often fixes some) or linearly dependent
    would make the tail singular, so then a linear kernel with a constant tail is used."""

    def __init__(self, F: np.ndarray, y: np.ndarray) -> None:
        from numpy.linalg import LinAlgError
        from scipy.interpolate import RBFInterpolator

        self.cols = _independent_columns(F)
        X = F[:, self.cols]
        self.model = None
        if len(y) > X.shape[1] + 1:
            try:
                self.model = RBFInterpolator(X, y, kernel="cubic", degree=1, smoothing=1e-4)
            except LinAlgError:
                self.model = None
        if self.model is None:
            self.model = RBFInterpolator(X, y, kernel="linear", degree=0, smoothing=1e-4)

    def __call__(self, F: np.ndarray) -> np.ndarray:
        return self.model(F[:, self.cols])


def _independent_columns(F: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Columns of ``F`` that vary and are linearly independent of each other and of the
    constant (QR with column pivoting on the centred matrix)."""
    from scipy.linalg import qr

    C = F - F.mean(0)
    if not np.any(C):
        return np.zeros(0, dtype=int)
    _, R, piv = qr(C, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int(np.sum(diag > tol * max(diag[0], 1e-300)))
    return np.sort(piv[:rank])


def _predict_members(models: list[Any], F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outs = []
    for m in models:
        if hasattr(m, "predict"):
            import xgboost as xgb

            outs.append(m.predict(xgb.DMatrix(F)))
        else:
            outs.append(m(F))
    P = np.vstack(outs)
    return P.mean(0), P.std(0)


# ---------------------------------------------------------------------------- archive
ARCHIVE_COLUMNS = ("eval", "key", "arch", "name", "feasible", "acc", "source", "generation")


class Archive:
    """Every evaluated subnet of a run, one row each, flushed to Parquet atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.acc: dict[str, float] = {}
        self._last_flush = time.perf_counter()
        self._dirty = False
        if path is not None and path.exists():
            try:
                df = pd.read_parquet(path)
            except Exception as exc:
                raise SearchError(f"cannot read the archive {path}: {exc}") from None
            for row in df.to_dict("records"):
                if row.get("source") == "oracle" and not pd.isna(row.get("acc")):
                    self.acc[row["key"]] = float(row["acc"])
            self.previous = df
        else:
            self.previous = None

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self._dirty = True
        if time.perf_counter() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=None if self.rows else list(ARCHIVE_COLUMNS))

    def flush(self) -> None:
        """Write the rows; rows of an earlier (resumed) run that this run has not replayed
        yet are kept after them, so an interrupted replay never loses a measured accuracy."""
        self._last_flush = time.perf_counter()
        if self.path is None or not self._dirty:
            return
        df = self.frame()
        if self.previous is not None and len(self.previous):
            rest = self.previous[~self.previous["key"].isin(set(df["key"]))]
            if len(rest):
                df = pd.concat([df, rest], ignore_index=True) if len(df) else rest
        tmp = self.path.with_name(self.path.name + ".partial")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)
        self._dirty = False


# -------------------------------------------------------------------------- evaluator
class Evaluator:
    """Objective values of candidate encodings; minimisation form for pymoo.

    ``F`` has one column per objective (accuracy negated), ``G`` one constraint
    (budget device latency minus the largest budget) when budgets are set. Accuracy is
    asked for only where the budget is met, once per arch; ``count`` is the number of
    distinct archs whose accuracy this run asked for (or of all archs without ``acc``)."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective],
                 predictors: Mapping[str, Any], accuracy: AccuracyFn | None,
                 budget_device: str | None = None, budget_ms: float | None = None,
                 archive: Archive | None = None) -> None:
        self.space, self.objectives = space, list(objectives)
        self.predictors, self.accuracy = dict(predictors), accuracy
        self.budget_device, self.budget_ms = budget_device, budget_ms
        self.archive = archive or Archive(None)
        self.has_acc = any(o.kind == "acc" for o in self.objectives)
        if self.has_acc and accuracy is None:
            raise SearchError("the objective 'acc' needs an accuracy source: a supernet "
                              "checkpoint (--checkpoint) or an accuracy table")
        self.seen: set[str] = set()
        self.generation = 0
        self.calls = 0  # accuracy answered by the accuracy source (not the archive)

    @property
    def count(self) -> int:
        return len(self.seen)

    def cheap(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted latency (and its uncertainty) per device, params and MACs."""
        out: dict[str, np.ndarray] = {}
        for o in self.objectives:
            if o.kind == "latency":
                mean, std = self.predictors[o.device].predict_with_uncertainty(X)
                out[o.name], out[o.name + ":std"] = np.asarray(mean), np.asarray(std)
        if self.budget_device and f"latency:{self.budget_device}" not in out:
            out[f"latency:{self.budget_device}"] = np.asarray(
                self.predictors[self.budget_device].predict(X))
        if any(o.kind in ("params", "macs") for o in self.objectives):
            counts = count_batch(X, self.space)
            out["macs"], out["params"] = counts[:, 0].astype(float), counts[:, 1].astype(float)
        return out

    def feasible(self, cheap: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if self.budget_ms is None:
            return np.ones(n, dtype=bool)
        return cheap[f"latency:{self.budget_device}"] <= self.budget_ms

    def matrix(self, cheap: Mapping[str, np.ndarray], acc: np.ndarray) -> np.ndarray:
        cols = [-acc if o.kind == "acc" else cheap[o.name] for o in self.objectives]
        return np.column_stack(cols).astype(float)

    def constraint(self, cheap: Mapping[str, np.ndarray]) -> np.ndarray | None:
        if self.budget_ms is None:
            return None
        return (cheap[f"latency:{self.budget_device}"] - self.budget_ms)[:, None]

    def __call__(self, X: np.ndarray, limit: int | None = None,
                 cheap: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate a batch; with ``limit`` stop asking for accuracy once ``count``
        reaches it (the rest get accuracy 0 and are not archived). ``cheap``: this batch's
        :meth:`cheap` values when the caller has them already."""
        X = np.asarray(X, dtype=np.int64)
        archs = [self.space.decode(x) for x in X]
        cheap = self.cheap(X) if cheap is None else cheap
        ok = self.feasible(cheap, len(X))
        acc = np.zeros(len(X))
        keep = np.ones(len(X), dtype=bool)
        if self.has_acc:
            ask, ask_keys = [], set()
            for i, a in enumerate(archs):
                if not ok[i]:
                    continue
                if a.key not in self.seen:
                    if limit is not None and self.count >= limit:
                        keep[i] = False
                        continue
                    self.seen.add(a.key)
                if a.key not in self.archive.acc and a.key not in ask_keys:
                    ask.append(a)
                    ask_keys.add(a.key)
            if ask:
                values = np.asarray(self.accuracy(ask), dtype=float)
                self.calls += len(ask)
                self.archive.acc.update({a.key: float(v) for a, v in zip(ask, values)})
            acc = np.array([self.archive.acc.get(a.key, 0.0) if ok[i] and keep[i] else 0.0
                            for i, a in enumerate(archs)])
        else:
            for i, a in enumerate(archs):
                if limit is not None and self.count >= limit and a.key not in self.seen:
                    keep[i] = False
                else:
                    self.seen.add(a.key)
        self._record(archs, cheap, acc, ok, keep)
        return self.matrix(cheap, acc), self.constraint(cheap)

    def _record(self, archs, cheap, acc, ok, keep) -> None:
        rows = []
        for i, a in enumerate(archs):
            if not keep[i]:
                continue
            row = {"eval": len(self.archive.rows) + len(rows), "key": a.key,
                   "arch": a.to_json(), "name": self.space.arch_name(a), "r": a.r,
                   "feasible": bool(ok[i]),
                   "acc": float(acc[i]) if self.has_acc and ok[i] else float("nan"),
                   "source": "oracle" if self.has_acc and ok[i] else "predictor",
                   "generation": self.generation, "count": self.count}
            for name, values in cheap.items():
                row[name] = float(values[i])
            rows.append(row)
        self.archive.add(rows)


# --------------------------------------------------------------------- pymoo bridge
def _pymoo():
    try:
        import pymoo  # noqa: F401
    except ImportError:
        raise SearchError("search needs pymoo: pip install 'hwnas[search]'") from None
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.core.sampling import Sampling

    return Problem, Sampling, Mutation, Repair


def allowed_resolution_genes(space: SearchSpace, resolutions: Sequence[int]) -> np.ndarray:
    if not resolutions:
        return np.arange(len(space.resolutions))
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise SearchError(f"resolution(s) {bad} are not in space {space.name!r}; allowed: "
                          f"{list(space.resolutions)}")
    return np.array(sorted(space.resolutions.index(r) for r in set(resolutions)))


def canonical(X: np.ndarray, space: SearchSpace, r_genes: np.ndarray) -> np.ndarray:
    """Zero genes past each stage's depth and snap the resolution gene to an allowed one,
    so equal archs have equal vectors (duplicates are found) and every vector is valid."""
    X = np.asarray(np.round(X), dtype=np.int64).copy()
    lo, hi = space.bounds
    X = np.clip(X, lo, hi)
    md, step = space.max_depth, 1 + 2 * space.max_depth
    depths = np.asarray(space.depths)
    slot = np.arange(md)
    for s in range(space.n_stages):
        d = depths[X[:, s * step]]
        past = slot[None, :] >= d[:, None]
        X[:, s * step + 1:s * step + 1 + md][past] = 0
        X[:, s * step + 1 + md:s * step + 1 + 2 * md][past] = 0
    nearest = np.abs(X[:, -1][:, None] - r_genes[None, :]).argmin(1)
    X[:, -1] = r_genes[nearest]
    return X


def make_problem(evaluator: Evaluator, r_genes: np.ndarray, limit: int | None = None,
                 accuracy_override: AccuracyFn | None = None):
    """A pymoo Problem over the encoding; with ``accuracy_override`` (NAT's surrogate)
    accuracy comes from it and nothing is archived."""
    Problem, *_ = _pymoo()
    space = evaluator.space
    lo, hi = space.bounds
    n_constr = 1 if evaluator.budget_ms is not None else 0

    class ArchProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=space.n_var, n_obj=len(evaluator.objectives),
                             n_ieq_constr=n_constr, xl=lo, xu=hi, vtype=int)

        def _evaluate(self, X, out, *args, **kwargs):
            X = canonical(X, space, r_genes)
            if accuracy_override is None:
                F, G = evaluator(X, limit)
            else:
                cheap = evaluator.cheap(X)
                ok = evaluator.feasible(cheap, len(X))
                acc = np.where(ok, accuracy_override([space.decode(x) for x in X]), 0.0) \
                    if evaluator.has_acc else np.zeros(len(X))
                F, G = evaluator.matrix(cheap, acc), evaluator.constraint(cheap)
            out["F"] = F
            if G is not None:
                out["G"] = G

    return ArchProblem()


def _operators(space: SearchSpace, r_genes: np.ndarray) -> dict[str, Any]:
    _, Sampling, Mutation, Repair = _pymoo()
    from pymoo.operators.crossover.ux import UniformCrossover

    lo, hi = space.bounds

    class ArchSampling(Sampling):
        """Uniform over every gene (OFA's sampler), then canonical."""

        def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
            X = random_state.integers(lo, hi + 1, size=(n_samples, space.n_var))
            return canonical(X, space, r_genes)

    class ArchMutation(Mutation):
        """Redraw each gene with probability ``rate`` to a different value."""

        def __init__(self, rate: float) -> None:
            super().__init__()
            self.rate = rate

        def _do(self, problem, X, *args, random_state=None, **kwargs):
            X = np.asarray(X, dtype=np.int64).copy()
            span = hi - lo + 1
            hit = (random_state.random(X.shape) < self.rate) & (span > 1)[None, :]
            shift = random_state.integers(1, np.maximum(span, 2)[None, :].repeat(len(X), 0))
            X[hit] = ((X - lo + shift) % span + lo)[hit]
            return X

    class CanonicalRepair(Repair):
        def _do(self, problem, X, **kwargs):
            return canonical(X, space, r_genes)

    return {"sampling": ArchSampling(), "crossover": UniformCrossover(prob=0.9),
            "mutation": ArchMutation(rate=2.0 / space.n_var), "repair": CanonicalRepair(),
            "eliminate_duplicates": True}


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


def make_algorithm(name: str, n_obj: int, pop_size: int, space: SearchSpace,
                   r_genes: np.ndarray, weights: Sequence[float] | None = None,
                   sampling: np.ndarray | None = None):
    """A pymoo algorithm by name, with operators that keep every candidate a valid arch."""
    _pymoo()
    ops = _operators(space, r_genes)
    if sampling is not None:
        ops["sampling"] = sampling
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=pop_size, **ops)
    if name == "moga":
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

        w = list(weights) if weights is not None else [1.0] * n_obj
        return NSGA2(pop_size=pop_size, survival=RankAndCrowding(
            crowding_func=weighted_crowding(w)), **ops)
    if name == "nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        parts = 1
        while math.comb(parts + 1 + n_obj - 1, n_obj - 1) <= pop_size:
            parts += 1
        ref = get_reference_directions("das-dennis", n_obj, n_partitions=parts)
        return NSGA3(ref_dirs=ref, pop_size=max(pop_size, len(ref)), **ops)
    raise SearchError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")


# ------------------------------------------------------------------------ algorithms
def _run_pymoo(algorithm, problem, evaluator: Evaluator, budget: int, seed: int,
               on_generation: Callable[[], None], max_stall: int = 30) -> None:
    algorithm.setup(problem, seed=seed, verbose=False)
    stall, last = 0, -1
    while evaluator.count < budget and stall < max_stall:
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:
            break
        algorithm.evaluator.eval(problem, pop)
        algorithm.tell(infills=pop)
        evaluator.generation += 1
        stall = stall + 1 if evaluator.count == last else 0
        last = evaluator.count
        on_generation()


def _run_random(evaluator: Evaluator, r_genes: np.ndarray, budget: int, seed: int,
                batch: int, on_generation: Callable[[], None], max_stall: int = 30,
                max_draws: int = 1 << 16) -> None:
    """Uniform samples, rejected when over the budget (which costs no accuracy
    evaluation). Under a tight budget most draws are rejected, so a round that finds
    nothing draws four times as many next time (up to ``max_draws``), as OFA's sampler
    redraws until it finds one."""
    space = evaluator.space
    lo, hi = space.bounds
    rng = np.random.default_rng(seed)
    stall, draws = 0, batch
    while evaluator.count < budget and stall < max_stall:
        before = evaluator.count
        X = canonical(rng.integers(lo, hi + 1, size=(draws, space.n_var)), space, r_genes)
        cheap = evaluator.cheap(X)
        ok = np.flatnonzero(evaluator.feasible(cheap, len(X)))[:batch]
        if len(ok):
            evaluator(X[ok], budget, {k: v[ok] for k, v in cheap.items()})
        else:
            draws = min(draws * 4, max_draws)
        evaluator.generation += 1
        stall = stall + 1 if evaluator.count == before else 0
        on_generation()


def _archive_data(evaluator: Evaluator) -> tuple[list[Arch], np.ndarray]:
    df = evaluator.archive.frame()
    df = df[(df["source"] == "oracle") & df["acc"].notna()].drop_duplicates("key")
    archs = [evaluator.space.arch(json.loads(a)) for a in df["arch"]]
    return archs, df["acc"].to_numpy(float)


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


def _run_nat(cfg: SearchConfig, evaluator: Evaluator, accuracy: AccuracyFn | None,
             r_genes: np.ndarray, on_generation: Callable[[], None],
             log: list[dict[str, Any]]) -> None:
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    space = evaluator.space
    objs = evaluator.objectives
    acc_col = [o.kind for o in objs].index("acc")
    lat_col = next((j for j, o in enumerate(objs) if o.kind != "acc"), acc_col)
    # 1. initial archive: random archs within the budget
    _run_random(evaluator, r_genes, min(cfg.nat_initial, cfg.evaluations), cfg.seed,
                cfg.pop_size, on_generation)
    it = 0
    while evaluator.count < cfg.evaluations:
        archs, acc = _archive_data(evaluator)
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
        lo, hi = space.bounds
        fill = canonical(rng.integers(lo, hi + 1, size=(cfg.pop_size - len(seed_pop),
                                                          space.n_var)), space, r_genes)
        problem = make_problem(evaluator, r_genes, accuracy_override=surrogate)
        algo = make_algorithm("nsga2", len(objs), cfg.pop_size, space, r_genes,
                              sampling=np.vstack([seed_pop, fill]))
        from pymoo.optimize import minimize

        res = minimize(problem, algo, ("n_gen", cfg.nat_generations), seed=cfg.seed + it,
                       verbose=False)
        pop = res.pop
        X_c = canonical(pop.get("X"), space, r_genes)
        F_c = pop.get("F")
        G_c = pop.get("G")
        keys = {a.key for a in archs}
        fresh = [i for i, x in enumerate(X_c) if space.decode(x).key not in keys
                 and (G_c is None or G_c.size == 0 or G_c[i].max() <= 0)]
        if not fresh:  # the surrogate's front is all known: explore around it
            fresh_X = canonical(rng.integers(lo, hi + 1, size=(cfg.nat_per_iteration,
                                                               space.n_var)), space, r_genes)
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


# ---------------------------------------------------------------------- hypervolume
def objective_bounds(evaluator: Evaluator) -> tuple[np.ndarray, np.ndarray]:
    """Ideal and nadir of every (minimised) objective for normalising hypervolume:
    error in [0, 1]; latency, params and MACs between the smallest and largest arch."""
    space = evaluator.space
    ends = np.stack([space.encode(space.smallest()), space.encode(space.largest())])
    cheap = evaluator.cheap(ends)
    lo, hi = [], []
    for o in evaluator.objectives:
        if o.kind == "acc":
            lo.append(-1.0)
            hi.append(0.0)
        else:
            v = cheap[o.name]
            lo.append(float(min(v)))
            hi.append(float(max(v)))
    return np.array(lo), np.array(hi)


def hypervolume(F: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Hypervolume of minimised points normalised to [0, 1] per objective, reference
    point 1.1 (so the extremes count); 0 for no points."""
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return 0.0
    span = np.where(upper > lower, upper - lower, 1.0)
    N = np.maximum((F - lower) / span, 0.0)  # a predictor may put an arch below the ideal
    N = N[np.all(N <= 1.1, axis=1)]
    if len(N) == 0:
        return 0.0
    N = N[non_dominated(N)]
    return float(HV(ref_point=np.full(F.shape[1], 1.1))(N)) / 1.1 ** F.shape[1]


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (all minimised)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=int)


def archive_objectives(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    if df.empty:  # nothing met the budget: no columns to read
        return np.zeros((0, len(objectives)))
    cols = [-df["acc"].to_numpy(float) if o.kind == "acc" else df[o.name].to_numpy(float)
            for o in objectives]
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def scored_rows(df: pd.DataFrame, has_acc: bool) -> pd.DataFrame:
    """The archive rows that count: feasible and (with acc) evaluated, one per arch."""
    if df.empty:
        return df
    keep = df["feasible"].astype(bool)
    if has_acc:
        keep &= df["acc"].notna()
    return df[keep].drop_duplicates("key")


# ---------------------------------------------------------------------------- result
@dataclass
class SearchResult:
    """What a search found and where it wrote it."""

    out_dir: Path
    archive: pd.DataFrame
    front: pd.DataFrame
    best: dict[float, dict[str, Any]]       # budget (ms, or 0: no budget) -> row
    hypervolume: list[tuple[int, float]]   # (accuracy evaluations, normalised HV)
    evaluations: int
    accuracy_calls: int
    seconds: float
    nat_log: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _best_per_budget(df: pd.DataFrame, cfg: SearchConfig) -> dict[float, dict[str, Any]]:
    objs = cfg.parsed_objectives
    first = objs[0]
    rows = scored_rows(df, "acc" in cfg.objectives)
    out: dict[float, dict[str, Any]] = {}
    if rows.empty:
        return out
    for b in cfg.budgets_ms or (0.0,):
        sub = rows if not b else rows[rows[f"latency:{cfg.budget_device}"] <= b]
        if sub.empty:
            continue
        tie = f"latency:{cfg.budget_device}" if cfg.budget_device else first.name
        sub = sub.sort_values([first.name if first.kind != "acc" else "acc", tie],
                              ascending=[not first.maximize, True])
        out[b] = sub.iloc[0].to_dict()
    return out


# ----------------------------------------------------------------------- entry point
def load_latency_predictor(device: str, space: SearchSpace, lut_dir: str | Path = "lut",
                           path: str | Path | None = None):
    """The device's saved predictor (``hwnas predictor fit``), checked against the space."""
    from hwnas.devices import find_device_file
    from hwnas.errors import DeviceError
    from hwnas.predictor import PredictorError, default_predictor_path, load_predictor

    file = Path(path) if path else default_predictor_path(device, lut_dir)
    if not file.exists():
        try:
            find_device_file(device)
        except DeviceError as exc:
            raise SearchError(f"objective latency:{device}: {exc}") from None
        raise SearchError(f"no latency predictor for device {device!r} at {file}; make one "
                          f"with 'hwnas profile --device {device} --subnets 300' then 'hwnas "
                          f"predictor fit --device {device}' (or pass --lut FOLDER)")
    try:
        return load_predictor(file, space=space)
    except PredictorError as exc:
        raise SearchError(f"latency:{device}: {exc}") from None


def _check_budgets(cfg: SearchConfig, space: SearchSpace, predictors: Mapping[str, Any],
                   r_genes: np.ndarray) -> None:
    if not cfg.budgets_ms:
        return
    smallest = space.smallest()
    r_min = space.resolutions[int(r_genes[0])]
    smallest = space.arch(r=r_min, d=smallest.d, k=smallest.k, e=smallest.e)
    floor = float(np.asarray(predictors[cfg.budget_device].predict([smallest]))[0])
    low = [b for b in cfg.budgets_ms if b < floor]
    if low:
        raise SearchError(f"budget(s) {low} ms are below the predicted latency of the "
                          f"smallest network on {cfg.budget_device} ({floor:.3f} ms); no arch "
                          f"can meet them")


def prepare(cfg: SearchConfig, accuracy: AccuracyFn | None = None,
            predictors: Mapping[str, Any] | None = None,
            archive_path: Path | None = None) -> tuple[Evaluator, np.ndarray, AccuracyFn | None]:
    """Check everything a search needs before any work: objectives, devices, predictors,
    budgets, the accuracy source. Returns the evaluator and the allowed resolution genes."""
    space = get_space(cfg.space)
    objs = cfg.parsed_objectives
    r_genes = allowed_resolution_genes(space, cfg.resolutions)
    preds = dict(predictors or {})
    for o in objs:
        if o.kind == "latency" and o.device not in preds:
            preds[o.device] = load_latency_predictor(o.device, space, cfg.lut_dir,
                                                     cfg.predictors.get(o.device))
    for device, p in preds.items():
        if p.space.id != space.id:
            raise SearchError(f"the predictor for {device} is for space {p.space.name!r}, the "
                              f"search is over {space.name!r}")
    _check_budgets(cfg, space, preds, r_genes)
    if "acc" in cfg.objectives and accuracy is None:
        if cfg.accuracy:
            accuracy = named_accuracy(cfg.accuracy, space,
                                      [space.resolutions[i] for i in r_genes])
        elif cfg.checkpoint:
            accuracy = SupernetAccuracy(cfg.checkpoint, space, cfg.data, cfg.calib_batches,
                                        cfg.seed)
        elif cfg.accuracy_table:
            accuracy = AccuracySurrogate.from_table(cfg.accuracy_table, space, cfg.seed)
        else:
            raise SearchError("the objective 'acc' needs an accuracy source: --checkpoint "
                              "(a supernet from 'hwnas train'), --accuracy-table or "
                              "--accuracy ofa-predictor:PATH")
    evaluator = Evaluator(space, objs, preds, accuracy, cfg.budget_device,
                          max(cfg.budgets_ms) if cfg.budgets_ms else None, Archive(archive_path))
    return evaluator, r_genes, accuracy


def search(cfg: SearchConfig, out_dir: str | Path | None = None, resume: bool = False,
           accuracy: AccuracyFn | None = None, predictors: Mapping[str, Any] | None = None,
           progress: bool = True, plots: bool = True) -> SearchResult:
    """Run a search into ``out_dir`` (default ``runs/search-<time>``). ``accuracy`` and
    ``predictors`` (device -> predictor) override what ``cfg`` names (Python API)."""
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir else Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
    config_path, archive_path = out / "config.json", out / "archive.parquet"
    if resume:
        if not config_path.exists():
            raise SearchError(f"cannot resume {out}: it has no config.json (not a search run)")
        cfg = SearchConfig.from_dict(read_json(config_path, SearchError, "search config"))
    elif archive_path.exists():
        raise SearchError(f"{out} already holds a search; resume it with --resume {out} or "
                          f"choose another --out")
    evaluator, r_genes, accuracy = prepare(cfg, accuracy, predictors,
                                           archive_path if resume else None)
    out.mkdir(parents=True, exist_ok=True)
    evaluator.archive.path = archive_path
    config_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    lower, upper = objective_bounds(evaluator)
    hv_trace: list[tuple[int, float]] = []
    nat_log: list[dict[str, Any]] = []

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{cfg.algorithm}", total=cfg.evaluations)

        def on_generation() -> None:
            df = evaluator.archive.frame()
            rows = scored_rows(df, evaluator.has_acc)
            F = archive_objectives(rows, evaluator.objectives) if len(rows) else np.zeros((0, 1))
            hv_trace.append((evaluator.count, hypervolume(F, lower, upper)))
            best = _best_per_budget(df, cfg) if len(rows) else {}
            text = " ".join(f"≤{b:g}ms {_fmt_best(r, cfg)}" if b else _fmt_best(r, cfg)
                            for b, r in best.items())
            bar.update(task, completed=min(evaluator.count, cfg.evaluations),
                       description=f"{cfg.algorithm} {text}")

        if cfg.algorithm == "random":
            _run_random(evaluator, r_genes, cfg.evaluations, cfg.seed, cfg.pop_size,
                        on_generation)
        elif cfg.algorithm == "nat":
            _run_nat(cfg, evaluator, accuracy, r_genes, on_generation, nat_log)
        else:
            weights = [cfg.weights.get(o, 1.0) for o in cfg.objectives]
            algo = make_algorithm(cfg.algorithm, len(cfg.objectives), cfg.pop_size,
                                  evaluator.space, r_genes, weights)
            _run_pymoo(algo, make_problem(evaluator, r_genes, cfg.evaluations), evaluator,
                       cfg.evaluations, cfg.seed, on_generation)
    evaluator.archive.flush()
    return _finish(cfg, evaluator, out, hv_trace, nat_log, time.perf_counter() - t0, plots)


def _fmt_best(row: Mapping[str, Any], cfg: SearchConfig) -> str:
    if "acc" in cfg.objectives:
        return f"{row['acc']:.1%}"
    first = cfg.objectives[0]
    return f"{first}={row[first]:.4g}"


def _finish(cfg: SearchConfig, evaluator: Evaluator, out: Path,
            hv_trace: list[tuple[int, float]], nat_log: list[dict[str, Any]],
            seconds: float, plots: bool) -> SearchResult:
    space = evaluator.space
    df = evaluator.archive.frame()
    rows = scored_rows(df, evaluator.has_acc)
    F = archive_objectives(rows, evaluator.objectives)
    front = rows.iloc[non_dominated(F)]
    if not front.empty:
        front = front.sort_values(
            [o.name if o.kind != "acc" else "acc" for o in evaluator.objectives][-1])
    files: dict[str, str] = {"archive": str(out / "archive.parquet"),
                             "config": str(out / "config.json")}
    front.to_csv(out / "pareto.csv", index=False)
    (out / "pareto.json").write_text(json.dumps(
        [{"arch": json.loads(r["arch"]), **{k: r[k] for k in _value_columns(r)}}
         for r in front.to_dict("records")], indent=1, default=_json_default) + "\n")
    files.update(pareto_csv=str(out / "pareto.csv"), pareto_json=str(out / "pareto.json"))
    best = _best_per_budget(df, cfg)
    for i, (b, row) in enumerate(best.items()):
        arch = json.loads(row["arch"])
        name = f"best-{b:g}ms.json" if b else "best.json"
        (out / name).write_text(json.dumps(arch) + "\n")
        files[name] = str(out / name)
        if i == 0 and b:
            (out / "best.json").write_text(json.dumps(arch) + "\n")
            files["best.json"] = str(out / "best.json")
    summary = {"algorithm": cfg.algorithm, "space": space.name,
               "evaluations": evaluator.count, "accuracy_calls": evaluator.calls,
               "seconds": seconds, "hypervolume": hv_trace[-1][1] if hv_trace else 0.0,
               "best": {f"{b:g}": {k: row[k] for k in ["key", "name", *_value_columns(row)]}
                        for b, row in best.items()},
               "nat": nat_log, "hypervolume_trace": hv_trace}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default)
                                      + "\n")
    files["summary"] = str(out / "summary.json")
    if plots:
        files.update(plot_run(out, cfg, df, front, best, hv_trace))
    return SearchResult(out, df, front, best, hv_trace, evaluator.count, evaluator.calls,
                        seconds, nat_log, files)


def _value_columns(row: Mapping[str, Any]) -> list[str]:
    return [k for k in row if k in ("acc", "params", "macs", "r") or k.startswith("latency:")]


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"not JSON serialisable: {type(v)}")


def plot_run(out: Path, cfg: SearchConfig, df: pd.DataFrame, front: pd.DataFrame,
             best: Mapping[float, Mapping[str, Any]], hv_trace: Sequence[tuple[int, float]]
             ) -> dict[str, str]:
    """``front.png`` (first two objectives, budget lines, best per budget) and
    ``hypervolume.png`` (normalised hypervolume over evaluations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = cfg.parsed_objectives
    files = {}
    x_obj = next((o for o in objs if o.kind == "latency"), objs[-1])
    y_obj = next((o for o in objs if o is not x_obj), x_obj)
    col = lambda o: "acc" if o.kind == "acc" else o.name  # noqa: E731
    rows = scored_rows(df, "acc" in cfg.objectives)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if len(rows):
        ax.scatter(rows[col(x_obj)], rows[col(y_obj)], s=10, alpha=0.35, color="grey",
                   label=f"evaluated ({len(rows)})")
        ax.plot(front[col(x_obj)], front[col(y_obj)], "o-", color="tab:blue", ms=4,
                label=f"Pareto front ({len(front)})")
    for b, row in best.items():
        if b:
            ax.axvline(b, color="tab:red", ls="--", lw=0.8)
        ax.plot(row[col(x_obj)], row[col(y_obj)], "*", color="tab:red", ms=12)
    ax.set_xlabel(x_obj.name + (" (ms, predicted)" if x_obj.kind == "latency" else ""))
    ax.set_ylabel("top-1 accuracy" if y_obj.kind == "acc" else y_obj.name)
    ax.set_title(f"{cfg.algorithm} on {cfg.space}: front and best per budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=120)
    plt.close(fig)
    files["front_png"] = str(out / "front.png")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if hv_trace:
        xs, ys = zip(*hv_trace)
        ax.plot(xs, ys, "-", color="tab:green")
    ax.set_xlabel("accuracy evaluations" if "acc" in cfg.objectives else "evaluations")
    ax.set_ylabel("normalised hypervolume")
    ax.set_title(f"{cfg.algorithm}: hypervolume over the search")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=120)
    plt.close(fig)
    files["hypervolume_png"] = str(out / "hypervolume.png")
    return files


__all__ = ["ALGORITHMS", "AccuracySurrogate", "Archive", "Evaluator", "Objective",
           "SearchConfig", "SearchError", "SearchResult", "SupernetAccuracy", "canonical",
           "hypervolume", "make_algorithm", "make_problem", "non_dominated",
           "parse_objectives", "search", "weighted_crowding"]
