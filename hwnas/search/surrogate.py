"""NAT's accuracy surrogates: cheap stand-ins for the expensive accuracy objective.

A bagged ensemble of RBF interpolants (NAT's choice) or of boosted trees (the same
:class:`~hwnas.predictor.TreeEnsemble` the latency predictor uses), predicting accuracy from
the encoding; ``kind="auto"`` keeps whichever ranks better in cross-validation (Kendall
tau), and the ensemble's spread is the uncertainty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from hwnas.ops import encode_batch
from hwnas.search.config import SURROGATES, SearchError
from hwnas.space import Arch, SearchSpace

XGB_PARAMS = {"max_depth": 3, "eta": 0.1, "subsample": 0.8, "objective": "reg:squarederror",
              "nthread": 1, "verbosity": 0}
XGB_ROUNDS = 150


class AccuracySurrogate:
    """Predicts accuracy from the encoding (see the module docstring)."""

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
        subsets = [rng.choice(n, size=max(2, int(round(0.8 * n))), replace=False)
                   if n >= 5 else np.arange(n) for _ in range(self.members)]
        return _fit_members(kind, F, y, subsets, seed)

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
            models = _fit_members(kind, F, y, [train], self.seed + f)
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


def _fit_members(kind: str, F: np.ndarray, y: np.ndarray, subsets: Sequence[np.ndarray],
                 seed: int) -> list[Any]:
    """One model per subset: RBF interpolants, or the members of one tree ensemble."""
    if kind == "rbf":
        return [_Rbf(F[idx], y[idx]) for idx in subsets]
    from hwnas.predictor import TreeEnsemble

    return [TreeEnsemble(XGB_PARAMS, XGB_ROUNDS, len(subsets), seed).fit(F, y, subsets)]


def _predict_members(models: list[Any], F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outs = [m.predict_members(F) if hasattr(m, "predict_members") else m(F)[None]
            for m in models]
    P = np.vstack(outs)
    return P.mean(0), P.std(0)


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


__all__ = ["AccuracySurrogate"]
