"""Objective values of candidate archs, and where accuracy comes from.

The :class:`Evaluator` turns candidate encodings into objective values: the cheap ones
(``latency:<device>`` from that device's predictor, ``params``, ``macs``) for every
candidate, the expensive one (``acc``) only for candidates that meet the budget, once per
arch. Accuracy comes from a supernet (:class:`SupernetAccuracy`), a surrogate fitted on a
table of measured accuracies, or a named source (``ofa-predictor:PATH``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwnas.ops import count_batch
from hwnas.search.archive import Archive
from hwnas.search.config import Objective, SearchConfig, SearchError
from hwnas.space import Arch, SearchSpace

AccuracyFn = Callable[[Sequence[Arch]], np.ndarray]


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
        self.verifier = None  # measures near-budget candidates (hwnas.search.verify)
        self._recorded: dict[str, dict] | None = None  # a resumed run's archived values

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
        if self.verifier is not None:
            out[f"latency:{self.budget_device}:measured"] = self.verifier.is_measured(X)
        self._replay(X, out)
        return out

    def _replay(self, X: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """A resumed run answers the archs its archive holds with the values recorded then,
        not predictions made now: the predictors may since have been scaled for another
        drift of the machine (``--allow-drift``), which would move the budget's boundary and
        send the replayed trajectory elsewhere (new archs evaluated, another winner)."""
        if self._recorded is None:
            prev = self.archive.previous
            self._recorded = {} if prev is None or not len(prev) else {
                key: row for key, row in zip(prev["key"], prev.to_dict("records"))}
        if not self._recorded:
            return
        measured = f"latency:{self.budget_device}:measured"
        for i, x in enumerate(np.asarray(X, dtype=np.int64)):
            row = self._recorded.get(self.space.decode(x).key)
            if row is None or row.get(measured) in (True, np.True_):
                continue  # a measured row was overwritten: the verifier replays its store
            for name, values in out.items():
                value = row.get(name)
                if value is not None and not (isinstance(value, float) and np.isnan(value)):
                    values[i] = value

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
        if self.verifier is not None:
            self.verifier.count = self.count
            if self.verifier.check(X):
                cheap = None  # measured values replace predictions
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
                row[name] = values[i].item()
            rows.append(row)
        self.archive.add(rows)


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


def named_accuracy(spec: str, space: SearchSpace, resolutions: Sequence[int],
                   data: str = "digits", seed: int = 0) -> AccuracyFn:
    """An accuracy source from ``--accuracy``: ``ofa-predictor:PATH`` is Once-for-All's
    ImageNet accuracy predictor (no checkpoint, no data needed; checked against the
    resolutions the search may visit); ``bn:CKPT`` BN-NAS's BN-γ indicator of a supernet
    (no data); ``dna:CKPT`` the block losses of a supernet trained with DNA, on the
    validation images of ``data``."""
    from hwnas.ofa import OfaAccuracyPredictor, OfaError
    from hwnas.train import TrainError

    kind, _, path = spec.partition(":")
    try:
        if kind == "bn":
            from hwnas.methods.bnnas import BnIndicator

            return BnIndicator(path, space)
        if kind == "dna":
            from hwnas.data import load_dataset
            from hwnas.methods.dna import DnaRating

            _, val = load_dataset(data, max(space.resolutions), seed)
            return DnaRating(path, space, val)
        source = OfaAccuracyPredictor(path, space)
        source.check_resolutions(resolutions)
    except (OfaError, TrainError) as exc:
        raise SearchError(f"--accuracy {kind}: {exc}") from None
    return source


def accuracy_source(cfg: SearchConfig, space: SearchSpace, resolutions: Sequence[int]
                    ) -> AccuracyFn:
    """The accuracy source ``cfg`` names: ``--accuracy``, a checkpoint or an accuracy
    table (checked before any work)."""
    if cfg.accuracy:
        return named_accuracy(cfg.accuracy, space, resolutions, cfg.data, cfg.seed)
    if cfg.checkpoint:
        return SupernetAccuracy(cfg.checkpoint, space, cfg.data, cfg.calib_batches, cfg.seed)
    if cfg.accuracy_table:
        from hwnas.search.surrogate import AccuracySurrogate

        return AccuracySurrogate.from_table(cfg.accuracy_table, space, cfg.seed)
    raise SearchError("the objective 'acc' needs an accuracy source: --checkpoint "
                      "(a supernet from 'hwnas train'), --accuracy-table or "
                      "--accuracy ofa-predictor:PATH")


__all__ = ["AccuracyFn", "Evaluator", "SupernetAccuracy", "accuracy_source",
           "named_accuracy"]
