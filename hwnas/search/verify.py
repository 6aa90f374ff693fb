"""On-device verification: budgets that hold when measured, not only when predicted.

A predicted latency is an estimate with an uncertainty, and the search pushes its best
archs right up against the budget, where a 3% error breaks it. When this machine runs the
budget's device, :class:`Verifier`:

* measures every evaluated candidate whose predicted latency ± 2σ straddles a budget (the
  profiling protocol, on the model the device runs, converted beforehand and timed in a
  new process as the tables were, with the table's subnets nearest the prediction timed
  between its rounds: the
  latency recorded is at the table's speed; where the predictions were scaled for a drift
  of this machine, times how much slower the table's subnets ran here, the drift ratio
  being a snapshot of that (:meth:`Verifier.today`); the raw one is kept), up to
  ``limit`` of them;
* answers those archs with the measurement from then on (the archive marks them measured)
  and refits a correction of the predictor, ``exp(a + b log p)``, on every measured point;
* measures each best-per-budget arch before it is reported, taking the next best while one
  breaks its budget, less a ``margin`` (3% by default: a second measurement of the same
  arch here differs by 1-4%, so one measured right at the budget would break it one time
  in two) (:meth:`Verifier.confirm`).

Measurements are kept in the run folder (``measured.parquet``) with the evaluation count at
which each was taken, so a resumed run replays the same decisions without measuring again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from hwnas import encoding
from hwnas.files import atomic_write
from hwnas.search.config import SearchError
from hwnas.space import SearchSpace

SIGMAS = 2.0
CONFIRM_TRIES = 50  # archs measured per budget at most before giving up on confirming one
# (device, tables) -> {(run folder, arch key): clock ratio}: the clocks seen in this process
_CLOCKS: dict[tuple[str, str], dict[tuple[str, str], float]] = {}


class Verifier:
    """Measures a search's candidates on its budget device (see the module docstring)."""

    def __init__(self, device, space: SearchSpace, predictor, budgets_ms, folder: Path,
                 limit: int = 100, lut_dir: str | Path | None = None,
                 margin: float = 0.0) -> None:
        from hwnas.backends import get_backend
        from hwnas.probe import drift_scale

        self.device, self.space, self.base = device, space, predictor
        # predictions scaled for a drift of this machine (--allow-drift) are in today's
        # terms: a latency at the table's speed is put in them (see today)
        self.scale = drift_scale(predictor)
        self.budgets = np.asarray(sorted(budgets_ms), dtype=float)
        self.margin = float(margin)  # a best must be measured this fraction under a budget
        self.path = Path(folder) / "measured.parquet"
        self.limit = int(limit)
        self.lut_dir = Path(lut_dir) if lut_dir else None  # the tables a clock is taken from
        self.backend = get_backend(device, Path(folder) / ".cache" / device.name)
        self.stored: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                for row in pd.read_parquet(self.path).to_dict("records"):
                    self.stored[row["key"]] = row
            except Exception as exc:
                raise SearchError(f"cannot read {self.path}: {exc}") from None
        self.active: dict[bytes, float] = {}   # canonical encoding -> measured ms
        self.keys: dict[bytes, str] = {}
        self.coef = (0.0, 0.0, 0.0)            # a, b, residual std of log ratio
        self.measured_now = 0                  # measured by this process (not replayed)
        self.seconds = 0.0
        self.count = 0                         # the evaluator's count, set by the search
        self.in_search = 0                     # straddling candidates measured
        # ratio of the table's subnets' time here to their table time, one per measurement,
        # pooled over this process's verifiers of the same tables (see today); keyed by run
        # and arch, so a run folder opened twice adds its stored ones once
        self.clocks = _CLOCKS.setdefault((device.name, str(self.lut_dir)), {})
        self.clocks.update({(str(self.path.parent), k): float(r["clock_during"])
                            for k, r in self.stored.items()
                            if r.get("clock_during") is not None
                            and np.isfinite(r["clock_during"])})
        self.confirmed: dict[float, dict[str, Any]] = {}
        self.where = ""                        # where the last measurement ran

    # ----------------------------------------------------------------- predicting
    @property
    def kind(self) -> str:
        return f"{self.base.kind}, verified on {self.device.name}"

    def _corrected(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.base.predict_with_uncertainty(X)
        p, s = np.asarray(p, dtype=float), np.asarray(s, dtype=float)
        a, b, resid = self.coef
        factor = np.exp(a + b * np.log(np.maximum(p, 1e-9)))
        mean = p * factor
        return mean, np.sqrt((s * factor) ** 2 + (mean * resid) ** 2)

    def predict_with_uncertainty(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Measured latency (std 0) for measured archs, the corrected prediction else."""
        X = encoding.canonical(self.space, np.asarray(X))
        mean, std = self._corrected(X)
        if self.active:
            for i, row in enumerate(X):
                hit = self.active.get(row.tobytes())
                if hit is not None:
                    mean[i], std[i] = hit, 0.0
        return mean, std

    def predict(self, X) -> np.ndarray:
        return self.predict_with_uncertainty(X)[0]

    def is_measured(self, X) -> np.ndarray:
        X = encoding.canonical(self.space, np.asarray(X))
        return np.array([row.tobytes() in self.active for row in X], dtype=bool)

    # ----------------------------------------------------------------- measuring
    def straddling(self, X: np.ndarray) -> np.ndarray:
        """Rows of ``X`` (not yet measured) whose prediction ± 2σ straddles a budget (less
        its margin)."""
        X = encoding.canonical(self.space, np.asarray(X))
        mean, std = self._corrected(X)
        limits = self.budgets / (1 + self.margin)
        near = (np.abs(mean[:, None] - limits[None, :]) <= SIGMAS * std[:, None]).any(1)
        return np.flatnonzero(near & ~self.is_measured(X))

    def check(self, X: np.ndarray) -> int:
        """Measure the straddling candidates of an evaluated batch (within ``limit``)."""
        idx = self.straddling(X)[:max(0, self.limit - self.in_search)]
        if len(idx):
            self.measure(np.asarray(X)[idx])
            self.in_search += len(idx)
        return len(idx)

    def measure(self, X: np.ndarray) -> np.ndarray:
        """Measured latency (ms) of each row, from the run's store when a resumed run
        measured it before; refits the correction. New measurements are taken in a new
        process (:func:`hwnas.profile.in_fresh_process`), as the tables were."""
        from hwnas.profile import in_fresh_process

        X = encoding.canonical(self.space, np.asarray(X))
        base = np.asarray(self.base.predict(X), dtype=float)
        archs = [self.space.decode(x) for x in X]
        # arch key -> (arch, its prediction), each arch not measured before once
        todo = {a.key: (a, float(p)) for a, p in zip(archs, base) if a.key not in self.stored}
        if todo:
            t = time.perf_counter()
            todo_archs, near = zip(*todo.values())
            near = [p / self.scale for p in near]  # the table's own terms
            convert_ahead(self.device, self.space, todo_archs, self.backend.cache_dir,
                          self.lut_dir, near)
            stats, self.where = in_fresh_process(
                time_archs, self.device, self.space, todo_archs, self.backend.cache_dir,
                self.lut_dir, near)
            self.seconds += time.perf_counter() - t
            self.clocks.update({(str(self.path.parent), arch.key): st["drift"]
                                for arch, st in zip(todo_archs, stats) if "drift" in st})
            to_today = self.today()
            for (arch, predicted), st in zip(todo.values(), stats):
                # beside the table's own subnets: the latency at the table's speed, in the
                # prediction's terms (a host's slow phase moves both); the raw one is kept
                at_table = st.get("at_table_speed_ms")
                self.stored[arch.key] = {
                    "key": arch.key, "arch": arch.to_json(),
                    "latency_ms": st["latency_ms"] if at_table is None
                    else at_table * to_today,
                    "raw_ms": st["latency_ms"], "clock_during": st.get("drift", np.nan),
                    "at_table_ms": np.nan if at_table is None else at_table,
                    "drift_scale": self.scale, "to_today": to_today, "spread": st["spread"],
                    "predicted_ms": predicted, "at_count": self.count}
                self.measured_now += 1
            self._save()
        out = np.empty(len(X))
        for i, (x, arch) in enumerate(zip(X, archs)):
            row = self.stored[arch.key]
            self.active[x.tobytes()] = float(row["latency_ms"])
            self.keys[x.tobytes()] = arch.key
            out[i] = row["latency_ms"]
        self._refit()
        return out

    def today(self) -> float:
        """What a latency at the table's speed is multiplied by to meet the predictions: 1
        where they are the table's own; where they were scaled for a drift of this machine
        (--allow-drift), the median over every measurement of this process (and this run's
        stored ones) of how much slower the table's subnets ran here than in the table. The
        drift ratio is a snapshot of seconds, or where the device has no subnet table the
        single-op probes', which track networks loosely: on an AMD host the probes ran
        1.45x their stored times while the table's subnets ran 1.69-1.73x, and the bests
        measured at table speed x 1.45 were 16% under what they ran in (9.29 ms raw for
        7.80). Pooled, not per run: that host's own speed moved
        the runs' medians from 1.56 to 1.89 over 20 minutes, and a best confirmed in a fast
        phase was re-measured 14% over its budget in a slow one."""
        if self.scale == 1.0 or not self.clocks:
            return self.scale
        return float(np.median(list(self.clocks.values())))

    def _refit(self) -> None:
        X = np.stack([np.frombuffer(k, dtype=np.int64) for k in self.active])
        measured = np.array(list(self.active.values()))
        p = np.maximum(np.asarray(self.base.predict(X), dtype=float), 1e-9)
        r = np.log(measured / p)
        if len(r) < 3:
            self.coef = (float(np.mean(r)), 0.0, 0.0)
            return
        A = np.column_stack([np.ones_like(p), np.log(p)])
        a, b = np.linalg.solve(A.T @ A + np.diag([1e-6, 1.0]), A.T @ r)
        self.coef = (float(a), float(b), float(np.std(r - A @ np.array([a, b]))))

    def _save(self) -> None:
        df = pd.DataFrame(list(self.stored.values()))
        atomic_write(self.path, lambda tmp: df.to_parquet(tmp, index=False))

    # ----------------------------------------------------------------- confirming
    def confirm(self, archive, cfg) -> dict[str, Any]:
        """Measure the best arch under each budget until the best one is measured and
        within its budget; the archive rows of every measured arch get the measured
        latency. Returns what it cost and what it found."""
        from hwnas.search.report import best_per_budget

        column = f"latency:{cfg.budget_device}"
        for b in self.budgets:
            for _ in range(CONFIRM_TRIES):
                df = archive.frame()
                best = best_per_budget(df, _one_budget(cfg, b), self.margin).get(float(b))
                if best is None:
                    break
                if best.get(column + ":measured") == True:  # noqa: E712 (numpy/NaN safe)
                    # measured and within the budget (best_per_budget kept it): done. A
                    # measured arch can make way for an unmeasured one that ties with it,
                    # so only the best as reported counts, not the last one measured.
                    self.confirmed[float(b)] = {"key": best["key"],
                                                "measured_ms": float(best[column])}
                    break
                x = encoding.canonical(self.space, self.space.encode(
                    self.space.arch(json.loads(best["arch"])))[None, :])
                if x[0].tobytes() not in self.active:
                    self.measure(x)
                archive.update(best["key"], {column: self.active[x[0].tobytes()],
                                             column + ":std": 0.0, column + ":measured": True})
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {"device": self.device.name, "measurements": len(self.active),
                "measured_now": self.measured_now, "in_search": self.in_search,
                "seconds": round(self.seconds, 1), "measured_in": self.where,
                "correction": list(self.coef), "margin": self.margin,
                "drift_scale": self.scale, "to_today": self.today(),
                "confirmed": {f"{b:g}": v for b, v in self.confirmed.items()}}


def time_archs(device, space: SearchSpace, archs, cache_dir: Path, lut_dir: Path | None,
               near_ms) -> list[dict[str, Any]]:
    """Each arch's network timed beside the table's subnets nearest its prediction
    (``near_ms``), in one process (:meth:`Verifier.measure` runs this in a new one, after
    :func:`convert_ahead`)."""
    from hwnas.probe import time_beside_table

    out = []
    for arch, near in zip(archs, near_ms):
        build, shape, key = _model_item(device, space, arch)
        out.append(time_beside_table(device, build(), shape, key, arch, space, lut_dir, near,
                                     cache_dir))
    return out


def convert_ahead(device, space: SearchSpace, archs, cache_dir: Path, lut_dir: Path | None,
                  near_ms) -> None:
    """Convert the archs' networks, and the table's subnets each is to be timed beside, into
    their caches in this process, so that the new process that times them (:func:`time_archs`)
    only loads files. Measured: a new process that exported one small-space net right
    before timing another timed it 5% slower than one that only loaded it (ONNX Runtime,
    median of 10 processes each; 1% on the default space)."""
    from hwnas.backends import get_backend
    from hwnas.probe import measurement_clock

    backend = get_backend(device, cache_dir)
    for runner in backend.prepare_many([_model_item(device, space, a) for a in archs]):
        runner.close()
    if lut_dir:
        for arch, near in zip(archs, near_ms):
            clock = measurement_clock(device, arch, space, lut_dir, near)
            if clock is not None:
                clock.close()


def _model_item(device, space: SearchSpace, arch):
    """(build, input shape, cache key) of ``arch``'s network on ``device``, as
    :meth:`hwnas.backends.base.Backend.prepare_many` takes them."""
    from functools import partial

    from hwnas.ops import build_network, ops

    return (partial(build_network, ops(arch, space)),
            device.input_shape((1, space.in_channels, arch.r, arch.r)),
            f"{space.id}:{arch.key}|{device.precision}|b{device.batch}")


def _one_budget(cfg, budget: float):
    import dataclasses

    return dataclasses.replace(cfg, budgets_ms=(float(budget),))


def make_verifier(cfg, space: SearchSpace, predictors: Mapping[str, Any], folder: Path
                  ) -> Verifier | None:
    """The run's verifier: with budgets, when ``cfg.verify`` is "on", or "auto" and this
    machine runs the budget device (None otherwise)."""
    from hwnas.devices import DeviceError, check_usable, load_device

    if not cfg.budgets_ms or cfg.verify == "off":
        return None
    try:
        device = load_device(cfg.budget_device)
    except DeviceError as exc:
        if cfg.verify == "on":
            raise SearchError(f"--verify: {exc}") from None
        return None
    problem = check_usable(device)
    if problem:
        if cfg.verify == "on":
            raise SearchError(f"--verify needs {device.name} on this machine: {problem}")
        return None
    return Verifier(device, space, predictors[cfg.budget_device], cfg.budgets_ms, folder,
                    cfg.verify_limit, cfg.lut_dir, cfg.verify_margin)


__all__ = ["Verifier", "make_verifier"]
