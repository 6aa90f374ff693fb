"""Latency predictors: from the lookup table to a number you can trust, with error bars.

A LUT sum misses what happens between ops (fusion, caches, per-call overhead). Each
predictor here has one interface, in scikit-learn's spirit:

``Predictor(table, **params)`` (parameters validated there; the table is a parameter, the
op costs the model builds on, not training data), ``fit(archs, latencies_ms)`` → self,
``predict(archs)`` → ms (batched, vectorised), ``predict_with_uncertainty(archs)`` → (ms,
std ms), ``score(archs, ms)`` → one number (the share within ±10%), ``metrics(archs, ms)``
→ the full report, ``get_params()``, ``save(path)`` and :func:`load_predictor`, which
rebuilds through ``__init__`` with the saved parameters. Kinds are registered by name in
:data:`PREDICTORS`.

* :class:`LutSum` – the table alone.
* :class:`LutLinear` – the table sum with a fitted scale and offset.
* :class:`MacsLinear` – a line through MACs, what people use when they have no LUT.
* :class:`XGBoostPredictor` – gradient-boosted trees on the encoding, per-stage LUT sums,
  the total, MACs, params and resolution, predicting the ratio measured / LUT sum; an
  ensemble of differently-seeded models gives the uncertainty.
* :class:`TransferPredictor` – few-shot transfer: a predictor fitted on device A, applied
  to device B's own LUT features, with a small correction fitted on k measured subnets of B.

Files are JSON only (XGBoost's JSON model format plus a JSON sidecar with the feature
names, the space, the device fingerprint, the training-set hash and the metrics); never
pickle. A predictor fitted for another space or device is refused unless asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from hwnas import encoding
from hwnas.errors import HwnasError, LutError, check_settings, read_json
from hwnas.files import atomic_write_text
from hwnas.lut import LatencyTable
from hwnas.ops import count_batch, encode_batch, sum_over_archs
from hwnas.registry import Registry
from hwnas.space import Arch, SearchSpace

if TYPE_CHECKING:
    from hwnas.display import Table

FORMAT_VERSION = 1


class PredictorError(HwnasError, ValueError):
    """A predictor was misused, or its file does not fit what it is loaded for."""


# ------------------------------------------------------------------------- metrics
def metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """RMSE (ms), MAPE, share within ±5% / ±10%, Kendall tau and Spearman rho."""
    from scipy.stats import kendalltau, spearmanr

    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.size == 0:
        raise PredictorError(f"need equally long, non-empty predictions and measurements, got "
                             f"{p.shape} and {m.shape}")
    rel = np.abs(p - m) / m
    tau = kendalltau(p, m).statistic if p.size > 1 else float("nan")
    rho = spearmanr(p, m).statistic if p.size > 1 else float("nan")
    return {"n": int(p.size), "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
            "mape": float(np.mean(rel)), "within_5pct": float(np.mean(rel <= 0.05 + 1e-12)),
            "within_10pct": float(np.mean(rel <= 0.10 + 1e-12)), "kendall_tau": float(tau),
            "spearman_rho": float(rho)}


def data_hash(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------ features
class Features:
    """Vectorised features of arch batches for one space and one LUT."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self.space = table.space
        sp = self.space
        self.names = ([f"g{i}" for i in range(sp.n_var)]
                      + [f"lut_stage{s}" for s in range(sp.n_stages)]
                      + ["lut_fixed", "lut_sum", "macs_m", "params_m", "resolution",
                         "n_blocks"])

    def lut_parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-stage LUT sums [n, S], fixed part [n]) for an encoding matrix."""
        blocks, fixed = self.table._tabulated()
        stages, out_fixed = sum_over_archs(X, self.space, blocks, fixed, per_stage=True)
        bad = np.isnan(stages).any(1) | np.isnan(out_fixed)
        if bad.any():
            self.table.predict([self.space.decode(X[np.flatnonzero(bad)[0]])])  # names the op
        return stages, out_fixed

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(feature matrix, LUT sum) for an encoding matrix."""
        sp = self.space
        X = np.asarray(X, dtype=np.int64)
        stages, fixed = self.lut_parts(X)
        lut_sum = stages.sum(1) + fixed
        counts = count_batch(X, sp)
        res = np.asarray(sp.resolutions)[X[:, -1]]
        n_blocks = encoding.stage_depths(sp, X).sum(1)
        F = np.column_stack([X, stages, fixed, lut_sum, counts[:, 0] / 1e6,
                             counts[:, 1] / 1e6, res, n_blocks]).astype(np.float32)
        return F, lut_sum


# ---------------------------------------------------------------------- predictors
def _as_X(archs: Arch | Sequence[Arch] | np.ndarray, space: SearchSpace) -> np.ndarray:
    if isinstance(archs, Arch):
        archs = [archs]
    return encode_batch(archs, space)


def _as_y(latencies: Sequence[float], n: int) -> np.ndarray:
    y = np.asarray(latencies, dtype=float)
    if y.shape != (n,):
        raise PredictorError(f"got {n} archs but {y.shape} latencies")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise PredictorError("latencies must be positive, finite numbers (ms)")
    return y


class Predictor:
    """Base class: the common interface, file format and validation."""

    kind = "base"
    needs_fit = True

    def __init__(self, table: LatencyTable | None = None, space: SearchSpace | None = None
                 ) -> None:
        if table is None and space is None:
            raise PredictorError(f"{type(self).__name__} needs a LatencyTable (or a space)")
        self.table = table
        self.space = table.space if table is not None else space
        self.fitted = not self.needs_fit
        self.train_hash: str | None = None
        self.train_metrics: dict[str, float] = {}
        self.extra: dict[str, Any] = {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.table.fingerprint) if self.table is not None else {}

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise PredictorError(f"{type(self).__name__} is not fitted: call fit() first")

    def fit(self, archs, latencies_ms) -> "Predictor":
        X = _as_X(archs, self.space)
        y = _as_y(latencies_ms, len(X))
        self._fit(X, y)
        self.fitted = True
        self.train_hash = data_hash(X, y)
        self.train_metrics = metrics(self._predict(X), y)
        return self

    def predict(self, archs) -> np.ndarray:
        """Predicted latency (ms) of every arch (Arch, list of Arch, or encodings)."""
        self._check_fitted()
        return self._predict(_as_X(archs, self.space))

    def predict_with_uncertainty(self, archs) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, standard deviation) in ms; zero spread where a model has none."""
        self._check_fitted()
        X = _as_X(archs, self.space)
        return self._predict_std(X)

    def _predict_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self._predict(X)
        return p, np.zeros_like(p)

    def metrics(self, archs, latencies_ms) -> dict[str, float]:
        """The full report against measurements: RMSE, MAPE, ±5%/±10%, Kendall, Spearman."""
        X = _as_X(archs, self.space)
        return metrics(self.predict(X), _as_y(latencies_ms, len(X)))

    def score(self, archs, latencies_ms) -> float:
        """One number, higher is better: the share of archs predicted within ±10%."""
        return self.metrics(archs, latencies_ms)["within_10pct"]

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters besides the table (saved, and restored through
        ``__init__`` by :func:`load_predictor`)."""
        return {}

    @classmethod
    def _from_file(cls, table: LatencyTable | None, space: SearchSpace,
                   params: dict[str, Any], state: dict[str, Any], path: Path) -> "Predictor":
        """A predictor of this kind built from a file's parameters (state not restored)."""
        return cls(table, **params)

    @classmethod
    def _from_old_file(cls, table: LatencyTable | None, space: SearchSpace,
                       state: dict[str, Any], path: Path) -> "Predictor":
        """A predictor from a file written before parameters were saved."""
        return cls._from_file(table, space, {}, state, path)

    # ----------------------------------------------------------------- persistence
    def _state(self, path: Path) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        pass

    def save(self, path: str | Path) -> Path:
        """Write the JSON sidecar (and any model files next to it). A model fitted with a
        table records the statistic of timed calls its tables hold (``extra["statistic"]``,
        unless set), which a device that measures another refuses."""
        self._check_fitted()
        extra = self.extra
        if self.needs_fit and self.table is not None:
            extra = {"statistic": self.table.statistic, **extra}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lut = None
        if self.table is not None and self.table.path is not None:
            import os

            # relative to the predictor file, so a folder of tables and predictors moves whole
            lut = os.path.relpath(Path(self.table.path).resolve(), path.parent.resolve())
        doc = {"format": "hwnas-predictor", "format_version": FORMAT_VERSION, "kind": self.kind,
               "space": self.space.to_dict(), "space_id": self.space.id,
               "fingerprint": self.fingerprint, "lut": lut, "train_hash": self.train_hash,
               "train_metrics": self.train_metrics, "extra": extra,
               "params": self.get_params(), "state": self._state(path)}
        return atomic_write_text(path, json.dumps(doc, separators=(",", ":")))


def load_predictor(path: str | Path, table: LatencyTable | None = None,
                   space: SearchSpace | None = None,
                   fingerprint: Mapping[str, Any] | None = None,
                   allow_mismatch: bool = False) -> Predictor:
    """Load a predictor; refuse one fitted for another space or device fingerprint
    (``allow_mismatch=True`` overrides). Without ``table`` the LUT it was fitted with is
    opened from the path recorded in the file."""
    from hwnas.devices import fingerprint_diff

    path = Path(path)
    doc = read_json(path, PredictorError, "predictor")
    if not isinstance(doc, dict) or doc.get("format") != "hwnas-predictor":
        raise PredictorError(f"{path} is not an hwnas predictor file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise PredictorError(f"{path}: format version {doc.get('format_version')!r}, this hwnas "
                             f"reads {FORMAT_VERSION}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in PREDICTORS:
        raise PredictorError(f"{path}: unknown predictor kind {kind!r}; known: "
                             f"{sorted(PREDICTORS)}")
    file_space = SearchSpace.from_dict(doc["space"])
    problems = []
    if space is not None and space.id != file_space.id:
        problems.append(f"it was fitted for space {file_space.name!r} (id {file_space.id}), "
                        f"not {space.name!r} (id {space.id})")
    if fingerprint is not None:
        fitted_at = int((doc.get("fingerprint") or {}).get("batch", 1))
        runs_at = int(fingerprint.get("batch", 1))
        if fitted_at != runs_at:  # another regime altogether: never overridden
            raise PredictorError(f"{path} was fitted at batch {fitted_at}; these tables are at "
                                 f"batch {runs_at}: fit a predictor on them ('hwnas predictor "
                                 f"fit --device {fingerprint.get('device', '<device>')}')")
        diff = fingerprint_diff(doc.get("fingerprint") or {}, fingerprint)
        if diff:
            problems.append("it was fitted on another device/runtime: " + "; ".join(diff))
    if problems and not allow_mismatch:
        raise PredictorError(f"refusing {path}: " + "; ".join(problems)
                             + " (refit it on this device's tables, or pass allow_mismatch / "
                             "'hwnas predictor eval --allow-mismatch' to use it anyway)")
    if table is None and doc.get("lut") and kind != "macs-linear":
        try:
            table = LatencyTable.load(path.parent / doc["lut"], file_space)
        except LutError as exc:
            raise PredictorError(f"{path}: its lookup table cannot be opened: {exc}") from None
    state = doc.get("state") or {}
    if not isinstance(state, dict):
        raise PredictorError(f"{path}: 'state' must be an object")
    params = doc.get("params")
    try:
        pred = PREDICTORS.get(kind)._from_file(table, file_space, params, state, path) \
            if params is not None else PREDICTORS.get(kind)._from_old_file(
                table, file_space, state, path)
        pred._restore(state, path)
    except PredictorError as exc:
        raise PredictorError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PredictorError(f"{path}: its {kind} model cannot be read ({type(exc).__name__}:"
                             f" {' '.join(str(exc).split())[:160]})") from None
    pred.fitted = True
    pred.source = str(path)
    pred.train_hash = doc.get("train_hash")
    pred.train_metrics = doc.get("train_metrics") or {}
    pred.extra = doc.get("extra") or {}
    return pred


class LutSum(Predictor):
    """The lookup table alone: the sum of the subnet's op latencies."""

    kind = "lut-sum"
    needs_fit = False

    def __init__(self, table: LatencyTable) -> None:
        super().__init__(table)

    def _fit(self, X, y) -> None:
        pass

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.table.predict(X)


class LutLinear(Predictor):
    """``scale * LUT sum + offset``, fitted by least squares; with ``offset=False`` the
    scale alone, as the median ratio (robust for a few noisy points, never negative)."""

    kind = "lut-linear"

    def __init__(self, table: LatencyTable, offset: bool = True) -> None:
        super().__init__(table)
        if not isinstance(offset, bool):
            raise PredictorError(f"LutLinear offset={offset!r} is not allowed; must be True "
                                 f"or False")
        self.offset = offset
        self.coef = (1.0, 0.0)

    def get_params(self) -> dict[str, Any]:
        return {"offset": self.offset}

    @classmethod
    def _from_old_file(cls, table, space, state, path):
        # older files did not save ``offset``; a scale-only fit left an offset of exactly 0
        return cls(table, offset=float(state["coef"][1]) != 0.0)

    def _fit(self, X, y) -> None:
        s = self.table.predict(X)
        if not self.offset:
            self.coef = (float(np.median(y / s)), 0.0)
            return
        A = np.column_stack([s, np.ones_like(s)])
        self.coef = tuple(float(v) for v in np.linalg.lstsq(A, y, rcond=None)[0])

    def _predict(self, X):
        return self.coef[0] * self.table.predict(X) + self.coef[1]

    def _state(self, path):
        return {"coef": list(self.coef)}

    def _restore(self, state, path):
        self.coef = tuple(state["coef"])


class MacsLinear(Predictor):
    """``a * MACs + b``: the FLOPs baseline, no LUT needed."""

    kind = "macs-linear"

    def __init__(self, table: LatencyTable | None = None, space: SearchSpace | None = None
                 ) -> None:
        super().__init__(table, space)
        self.coef = (0.0, 0.0)

    @classmethod
    def _from_file(cls, table, space, params, state, path):
        return cls(table, space, **params)

    def _macs(self, X):
        return count_batch(X, self.space)[:, 0] / 1e6

    def _fit(self, X, y):
        m = self._macs(X)
        A = np.column_stack([m, np.ones_like(m)])
        self.coef = tuple(float(v) for v in np.linalg.lstsq(A, y, rcond=None)[0])

    def _predict(self, X):
        return self.coef[0] * self._macs(X) + self.coef[1]

    def _state(self, path):
        return {"coef": list(self.coef)}

    def _restore(self, state, path):
        self.coef = tuple(state["coef"])


@dataclass(frozen=True)
class XGBParams:
    """Validated hyper-parameters of :class:`XGBoostPredictor`."""

    n_estimators: int = 300
    max_depth: int = 3
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample: float = 0.8
    ensemble: int = 5          # models with different seeds; their spread is the uncertainty
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            number = (int,) if f.type == "int" else (int, float)
            if isinstance(v, bool) or not isinstance(v, number):
                raise PredictorError(f"XGBoost parameter {f.name}={v!r} is not allowed; must be "
                                     f"{'an integer' if f.type == 'int' else 'a number'}")
        check_settings([("n_estimators", self.n_estimators >= 1, ">= 1"),
                        ("max_depth", 1 <= self.max_depth <= 16, "1..16"),
                        ("learning_rate", 0 < self.learning_rate <= 1, "in (0, 1]"),
                        ("subsample", 0 < self.subsample <= 1, "in (0, 1]"),
                        ("colsample", 0 < self.colsample <= 1, "in (0, 1]"),
                        ("ensemble", self.ensemble >= 1, ">= 1")],
                       PredictorError, "XGBoost parameter", self)


class TreeEnsemble:
    """Boosted-tree models (XGBoost's ``train``) fitted with consecutive seeds, each on all
    rows or on its own subset (bagging); the members' spread is the uncertainty. The one
    ensemble behind :class:`XGBoostPredictor` and NAT's accuracy surrogate. Serialised as
    XGBoost's own JSON models, never pickle."""

    def __init__(self, params: Mapping[str, Any], rounds: int, members: int = 1,
                 seed: int = 0, feature_names: Sequence[str] | None = None) -> None:
        if rounds < 1 or members < 1:
            raise PredictorError(f"a tree ensemble needs rounds and members >= 1, got "
                                 f"{rounds} and {members}")
        self.params, self.rounds, self.members = dict(params), int(rounds), int(members)
        self.seed = int(seed)
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.boosters: list[Any] = []

    def fit(self, F: np.ndarray, y: np.ndarray,
            subsets: Sequence[np.ndarray] | None = None) -> "TreeEnsemble":
        """Fit member i (seed ``seed + i``) on ``F[subsets[i]]`` (all rows by default)."""
        import xgboost as xgb

        whole = None
        self.boosters = []
        for i in range(self.members):
            if subsets is None:
                if whole is None:
                    whole = xgb.DMatrix(F, label=y, feature_names=self.feature_names)
                data = whole
            else:
                idx = subsets[i]
                data = xgb.DMatrix(F[idx], label=y[idx], feature_names=self.feature_names)
            self.boosters.append(xgb.train({**self.params, "seed": self.seed + i}, data,
                                           num_boost_round=self.rounds))
        return self

    def predict_members(self, F: np.ndarray) -> np.ndarray:
        """Each member's predictions, [members, n]."""
        return np.stack([b.inplace_predict(F) for b in self.boosters])

    def to_json(self) -> list[dict]:
        return [json.loads(b.save_raw("json")) for b in self.boosters]

    def load_json(self, models: Sequence[Mapping]) -> "TreeEnsemble":
        """Members from XGBoost JSON models (as many as the ensemble has)."""
        import re

        import xgboost as xgb

        if not isinstance(models, list) or len(models) != self.members:
            raise PredictorError(f"expected {self.members} XGBoost model(s), got "
                                 f"{len(models) if isinstance(models, list) else models!r:.40}")
        self.boosters = []
        for model in models:
            b = xgb.Booster()
            try:
                b.load_model(bytearray(json.dumps(model).encode()))
            except xgb.core.XGBoostError as exc:  # strip XGBoost's "[time] file.cc:line: "
                first = str(exc).strip().splitlines()[0]
                raise PredictorError(f"not an XGBoost model: "
                                     f"{re.sub(r'^.*?[.](cc|h):[0-9]+: ', '', first)[:120]}"
                                     ) from None
            b.set_param({"nthread": 1})
            self.boosters.append(b)
        return self


class XGBoostPredictor(Predictor):
    """Boosted trees predicting measured / LUT sum from arch and LUT features."""

    kind = "xgboost"

    def __init__(self, table: LatencyTable, **params: Any) -> None:
        super().__init__(table)
        try:
            self.params = XGBParams(**params)
        except TypeError as exc:
            raise PredictorError(f"unknown XGBoost parameter: {exc}; allowed: "
                                 f"{list(XGBParams.__dataclass_fields__)}") from None
        self.features = Features(table)
        self.trees = self._ensemble()

    def _ensemble(self) -> TreeEnsemble:
        p = self.params
        return TreeEnsemble({"objective": "reg:squarederror", "max_depth": p.max_depth,
                             "eta": p.learning_rate, "subsample": p.subsample,
                             "colsample_bytree": p.colsample, "nthread": 1,
                             "tree_method": "hist", "verbosity": 0},
                            p.n_estimators, p.ensemble, p.seed, self.features.names)

    def get_params(self) -> dict[str, Any]:
        return dict(self.params.__dict__)

    @classmethod
    def _from_old_file(cls, table, space, state, path):
        return cls(table, **state["params"])

    def _fit(self, X, y) -> None:
        F, s = self.features(X)
        self.trees.fit(F, y / s)

    def _ratios(self, X, features: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each ensemble member's predicted ratio to the LUT sum, and the LUT sum (from
        ``features``, by default this predictor's own LUT)."""
        F, s = (features or self.features)(X)
        return self.trees.predict_members(F), s

    def _predict(self, X):
        ratios, s = self._ratios(X)
        return ratios.mean(0) * s

    def _predict_std(self, X):
        ratios, s = self._ratios(X)
        return ratios.mean(0) * s, ratios.std(0) * s

    def _state(self, path):
        return {"params": self.params.__dict__, "feature_names": self.features.names,
                "models": self.trees.to_json()}

    def _restore(self, state, path):
        if state["feature_names"] != self.features.names:
            raise PredictorError(f"{path}: feature names differ from this hwnas's")
        self.trees.load_json(state["models"])


class TransferPredictor(Predictor):
    """Few-shot transfer to a new device: the base predictor's ratio model evaluated on
    the new device's LUT features, times a correction ``a + b * log(LUT sum)`` fitted on
    k measured subnets of the new device (k = 10–30 is enough; no new trees)."""

    kind = "transfer"

    def __init__(self, base: XGBoostPredictor, table: LatencyTable) -> None:
        if not isinstance(base, XGBoostPredictor):
            raise PredictorError("transfer needs a fitted XGBoostPredictor as its base")
        if base.space.id != table.space.id:
            raise PredictorError("the base predictor and the new device's LUT are for "
                                 "different search spaces")
        base._check_fitted()
        super().__init__(table)
        self.base = base
        self.features = Features(table)
        self.coef = (0.0, 0.0)

    def _prior(self, X):
        return self.base._ratios(X, self.features)  # A's trees on B's LUT features

    def _fit(self, X, y):
        ratios, s = self._prior(X)
        prior = ratios.mean(0) * s
        r = np.log(y / prior)
        A = np.column_stack([np.ones_like(s), np.log(s)])
        lam = 1.0  # ridge on the slope: with few samples, prefer a constant correction
        reg = np.diag([1e-6, lam])
        self.coef = tuple(float(v) for v in np.linalg.solve(A.T @ A + reg, A.T @ r))

    def _predict(self, X):
        p, _ = self._predict_std(X)
        return p

    def _predict_std(self, X):
        ratios, s = self._prior(X)
        corr = np.exp(self.coef[0] + self.coef[1] * np.log(s))
        return ratios.mean(0) * s * corr, ratios.std(0) * s * corr

    def _state(self, path):
        return {"coef": list(self.coef), "base": self.base._state(path),
                "base_fingerprint": self.base.fingerprint}

    @classmethod
    def _from_file(cls, table, space, params, state, path):
        base = XGBoostPredictor(table, **state["base"]["params"])
        base._restore(state["base"], path)
        base.fitted = True
        return cls(base, table, **params)

    def _restore(self, state, path):
        self.coef = tuple(state["coef"])


# Predictor kinds by name (what files record and ``--kind`` chooses from).
PREDICTORS: Registry = Registry("predictor", PredictorError)
for _cls in (LutSum, LutLinear, MacsLinear, XGBoostPredictor, TransferPredictor):
    PREDICTORS.register(_cls.kind, _cls)
# What ``hwnas predictor fit`` fits from a table and measured subnets (transfer needs a base).
FIT_KINDS = ("lut-sum", "lut-linear", "macs-linear", "xgboost", "fewshot")


def make_predictor(kind: str, table: LatencyTable, **params: Any) -> Predictor:
    """A predictor by name: lut-sum, lut-linear, macs-linear, xgboost."""
    if kind == "transfer":
        raise PredictorError("make a transfer predictor with TransferPredictor(base, table)")
    if kind not in FIT_KINDS:
        raise PredictorError(f"unknown predictor {kind!r}; known: {sorted(FIT_KINDS)}")
    try:
        return PREDICTORS.create(kind, table, **params)
    except TypeError as exc:
        raise PredictorError(f"predictor {kind!r}: {exc}") from None


def split_subnets(keys: Sequence[str], n_train: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out index split of measured subnets (by a seeded
    permutation), so the held-out set is the same for every predictor and every run."""
    n = len(keys)
    if not 1 <= n_train < n:
        raise PredictorError(f"need 1 <= train < {n} measured subnets, got train={n_train}")
    order = np.argsort([hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys])
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def plot_predicted_vs_measured(predicted, measured, path: str | Path, title: str,
                               std=None) -> Path:
    """Scatter of predicted vs measured latency with the ±5% / ±10% bands (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, m = np.asarray(predicted), np.asarray(measured)
    lo, hi = float(min(p.min(), m.min())) * 0.95, float(max(p.max(), m.max())) * 1.05
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, color="black", lw=1, label="exact")
    for band, style in ((0.05, "--"), (0.10, ":")):
        ax.plot(xs, xs * (1 + band), "gray", ls=style, lw=1, label=f"±{band:.0%}")
        ax.plot(xs, xs * (1 - band), "gray", ls=style, lw=1)
    if std is not None:
        ax.errorbar(m, p, yerr=np.asarray(std), fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
    else:
        ax.scatter(m, p, s=10, alpha=0.7)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)",
           ylabel="predicted latency (ms)", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------- device workflows (CLI)
@dataclass
class Report:
    """Held-out metrics per predictor, and the files written."""

    title: str
    rows: dict[str, dict[str, float]]
    files: dict[str, str]

    def table(self) -> "Table":
        from hwnas.display import Table

        table = Table(self.title, ["predictor", "n", "RMSE ms", "MAPE", "within ±5%",
                                   "within ±10%", "Kendall tau", "Spearman rho"])
        for name, m in self.rows.items():
            table.rows.append([name, str(m["n"]), f"{m['rmse_ms']:.4f}", f"{m['mape']:.2%}",
                               f"{m['within_5pct']:.1%}", f"{m['within_10pct']:.1%}",
                               f"{m['kendall_tau']:.3f}", f"{m['spearman_rho']:.3f}"])
        return table


def device_subnets(device: str, lut_dir: str | Path, space: SearchSpace | str | None = None,
                   need_lut: bool = False):
    """A device's measured subnets and, when it has one, its LUT: (table or None, space,
    subnet rows, archs, latencies ms). The rows' ``attrs["statistic"]`` says which
    statistic of timed calls they hold. Few-shot fitting needs no LUT; with ``need_lut`` a
    missing one is an error."""
    from hwnas.lut import read_table, table_paths, table_statistic
    from hwnas.space import get_space

    op_path, sub_path = table_paths(device, lut_dir)
    table = LatencyTable.load(op_path, get_space(space) if space else None) \
        if need_lut or op_path.exists() else None
    subs, meta = read_table(sub_path, "subnets", (table.fingerprint or None) if table else None)
    subs.attrs["statistic"] = table_statistic(meta)
    if table is not None:
        sp = table.space
    elif space is not None:
        sp = get_space(space)
    elif "space" in meta:
        sp = SearchSpace.from_dict(meta["space"])
    else:
        raise LutError(f"{sub_path}: the table does not say its search space; pass --space")
    archs = [sp.arch(json.loads(a)) for a in subs["arch"]]
    return table, sp, subs, archs, subs["latency_ms"].to_numpy(dtype=float)


def default_predictor_path(device: str, lut_dir: str | Path = "lut") -> Path:
    return Path(lut_dir) / f"{device}.predictor.json"


def device_predictor(device: str, space: SearchSpace | None = None,
                     lut_dir: str | Path = "lut", path: str | Path | None = None,
                     lut_sum_fallback: bool = False, allow_drift: bool = False,
                     check_drift: bool = True) -> tuple[Predictor, str]:
    """A device's latency predictor and where it came from: its saved predictor
    (``hwnas predictor fit``), checked against ``space`` and the device's tables; with
    ``lut_sum_fallback``, its lookup table's sum when no predictor was fitted. Where this
    machine runs the device, its tables' calibration probes and a few of its subnets are
    timed again first (``hwnas.probe``): a drift beyond ±10% is refused, or with
    ``allow_drift`` the predictions are scaled by it. Raises :class:`PredictorError`
    saying what to run when there is no predictor."""
    from hwnas.devices import find_device_file
    from hwnas.errors import DeviceError
    from hwnas.lut import read_table, table_paths

    file = Path(path) if path else default_predictor_path(device, lut_dir)
    op_path, sub_path = table_paths(device, lut_dir)
    pred, how = None, ""
    if file.exists():
        try:
            # the device's own tables say what it was measured on: a predictor fitted on
            # another device or runtime (say 8 threads against 1) is refused, as in eval
            measured = next((read_table(p, k)[1].get("fingerprint") for p, k in
                             ((op_path, "ops"), (sub_path, "subnets")) if p.exists()), None)
            pred = load_predictor(file, space=space, fingerprint=measured)
        except (PredictorError, LutError) as exc:
            raise PredictorError(f"latency:{device}: {exc}") from None
        how = f"{pred.kind} ({file})"
    elif lut_sum_fallback and op_path.exists():
        try:
            pred, how = LutSum(LatencyTable.load(op_path, space)), f"lut-sum ({op_path})"
        except LutError as exc:
            raise PredictorError(f"no predictor for {device}, and its LUT is unusable: "
                                 f"{exc}") from None
    if pred is None:
        try:
            find_device_file(device)
        except DeviceError as exc:
            raise PredictorError(f"objective latency:{device}: {exc}") from None
        raise PredictorError(f"no latency predictor for device {device!r} at {file}; make one "
                             f"with 'hwnas profile --device {device} --subnets 300' then "
                             f"'hwnas predictor fit --device {device}' (or pass --lut FOLDER)")
    dev = _local_device(device)
    want = dev.protocol.statistic if dev else None  # None: imported tables, no device file
    how += "".join(f"; {note}" for note in _check_tables(device, op_path, sub_path, want))
    # what a fitted model learned (files from before it was recorded: medians); a table's
    # sum learned nothing, and its table is checked above
    learned = pred.extra.get("statistic", "median")
    if want is not None and file.exists() and pred.needs_fit and learned != want:
        raise PredictorError(f"latency:{device}: {file} was fitted on the {learned} of "
                             f"timed calls, but the device's protocol now measures the "
                             f"{want}: fit it again on tables of the {want} ('hwnas predictor "
                             f"fit --device {device}')")
    if check_drift and dev is not None:
        from hwnas.probe import ScaledPredictor, drift_nets, table_probes
        from hwnas.probe import check_drift as drift_of

        probes, where = table_probes(device, lut_dir)
        drift = drift_of(dev, probes, where, allow_drift, Path(lut_dir) / ".cache" / device,
                         drift_nets(device, lut_dir))
        if drift.scaled:
            pred = ScaledPredictor(pred, drift)
        how += f"; {drift.note}"
    return pred, how


def _local_device(device: str):
    """The device's file as loaded here; None for tables of a device with no file here
    (imported ones), which are neither held to a protocol nor probed."""
    from hwnas.devices import load_device
    from hwnas.errors import DeviceError

    try:
        return load_device(device)
    except DeviceError:
        return None


def _check_tables(device: str, op_path: Path, sub_path: Path, want: str | None) -> list[str]:
    """A device's tables must hold ``want``, the statistic its protocol measures now (what
    search verification and export measurement compare the predictions with). Returns
    what a description of predictions from them must say: which tables were resumed across
    a drift of the machine (``profile --allow-drift``), their rows mixing speeds."""
    from hwnas.lut import read_table, table_statistic

    notes = []
    for path, kind in ((op_path, "ops"), (sub_path, "subnets")):
        if not path.exists():
            continue
        meta = read_table(path, kind)[1]
        have = table_statistic(meta)
        if want is not None and have != want:
            restate = (f", or restate it as the p10 of the same timed calls ('hwnas restate "
                       f"--device {device} --lut {path.parent}')"
                       if (have, want) == ("median", "p10") else "")
            raise PredictorError(f"latency:{device}: {path} holds the {have} of its timed "
                                 f"calls, but the device's protocol now measures the {want}; "
                                 f"profile it again ('hwnas profile --device {device}') "
                                 f"into another --out folder{restate}")
        drifts = meta.get("resumed_across_drift") or []
        if drifts:
            ratios = ", ".join(f"{d['ratio']:.2f}x" for d in drifts)
            notes.append(f"{path} was resumed across a drift of the machine ({ratios}): "
                         f"its rows mix speeds")
    return notes


def fit_for_device(device: str, kind: str = "xgboost", space=None, n_train: int = 200,
                   seed: int = 0, lut_dir: str | Path = "lut", out: str | Path | None = None
                   ) -> Report:
    """Fit ``kind`` on ``n_train`` measured subnets of ``device`` and report every
    predictor kind on the held-out rest; saves the fitted one and a scatter plot."""
    table, _, subs, archs, y = device_subnets(device, lut_dir, space, need_lut=True)
    keys = list(subs["key"])
    if len(keys) - n_train < 1:
        raise PredictorError(f"{device} has {len(keys)} measured subnets; fitting on "
                             f"{n_train} leaves none held out (profile more with --subnets, "
                             f"or lower --train)")
    tr, te = split_subnets(keys, n_train, seed)
    A, B = [archs[i] for i in tr], [archs[i] for i in te]
    rows, chosen = {}, None
    kinds = list(FIT_KINDS)
    if kind not in kinds:
        make_predictor(kind, table)  # raises the clear error
    for k in kinds:
        params = {"seed": seed} if k == "xgboost" else {}
        try:
            p = make_predictor(k, table, **params).fit(A, y[tr])
        except PredictorError:
            if k == kind:
                raise
            continue  # a kind shown beside the chosen one that cannot fit this few subnets
        rows[k] = p.metrics(B, y[te])
        if k == kind:
            chosen = p
    chosen.extra = {"device": device, "seed": seed, "train_keys": [keys[i] for i in tr],
                    "heldout_keys": [keys[i] for i in te], "heldout_metrics": rows[kind]}
    out = Path(out) if out else default_predictor_path(device, lut_dir)
    chosen.save(out)
    pred, std = chosen.predict_with_uncertainty(B)
    png = plot_predicted_vs_measured(pred, y[te], out.with_suffix(".png"),
                                     f"{device}: {kind}, {len(te)} held-out subnets", std)
    return Report(f"{device}: fitted on {len(tr)} subnets, held out {len(te)}", rows,
                  {"predictor": str(out), "plot": str(png)})


def evaluate_for_device(device: str, predictor_path: str | Path | None = None,
                        lut_dir: str | Path = "lut", allow_mismatch: bool = False) -> Report:
    """Score a saved predictor on the device's measured subnets it was not fitted on."""
    path = Path(predictor_path) if predictor_path else default_predictor_path(device, lut_dir)
    table, _, subs, archs, y = device_subnets(device, lut_dir, need_lut=True)
    pred = load_predictor(path, table=table, space=table.space, fingerprint=table.fingerprint,
                          allow_mismatch=allow_mismatch)
    seen = set(pred.extra.get("train_keys", []))
    held = [i for i, k in enumerate(subs["key"]) if k not in seen]
    if not held:
        raise PredictorError(f"every measured subnet of {device} was used to fit {path}; "
                             f"profile more subnets to evaluate it")
    B = [archs[i] for i in held]
    p, std = pred.predict_with_uncertainty(B)
    png = plot_predicted_vs_measured(p, y[held], path.with_suffix(".eval.png"),
                                     f"{device}: {pred.kind}, {len(held)} held-out subnets", std)
    return Report(f"{device}: {pred.kind} on {len(held)} held-out subnets",
                  {pred.kind: metrics(p, y[held])}, {"plot": str(png)})


def transfer_to_device(source: str, device: str, k: int = 20, seed: int = 0,
                       lut_dir: str | Path = "lut", out: str | Path | None = None) -> Report:
    """Fit ``device``'s predictor from ``source``'s XGBoost predictor and k subnets."""
    base_path = default_predictor_path(source, lut_dir)
    base = load_predictor(base_path)
    if not isinstance(base, XGBoostPredictor):
        raise PredictorError(f"{base_path} is a {base.kind!r} predictor; transfer needs "
                             f"'xgboost' (hwnas predictor fit --device {source} --kind xgboost)")
    table, _, subs, archs, y = device_subnets(device, lut_dir, need_lut=True)
    keys = list(subs["key"])
    tr, te = split_subnets(keys, k, seed)
    A, B = [archs[i] for i in tr], [archs[i] for i in te]
    rows = {"lut-sum (no fit)": LutSum(table).metrics(B, y[te])}
    rows[f"lut-linear (k={k})"] = LutLinear(table).fit(A, y[tr]).metrics(B, y[te])
    rows[f"xgboost from scratch (k={k})"] = XGBoostPredictor(table, seed=seed).fit(
        A, y[tr]).metrics(B, y[te])
    transfer = TransferPredictor(base, table).fit(A, y[tr])
    rows[f"transfer from {source} (k={k})"] = transfer.metrics(B, y[te])
    transfer.extra = {"device": device, "source": source, "seed": seed,
                      "train_keys": [keys[i] for i in tr], "heldout_keys": [keys[i] for i in te],
                      "heldout_metrics": rows[f"transfer from {source} (k={k})"]}
    out = Path(out) if out else default_predictor_path(device, lut_dir)
    transfer.save(out)
    p, std = transfer.predict_with_uncertainty(B)
    png = plot_predicted_vs_measured(p, y[te], out.with_suffix(".png"),
                                     f"{device}: transfer from {source}, k={k}", std)
    return Report(f"{device}: transfer from {source} with {k} subnets, {len(te)} held out",
                  rows, {"predictor": str(out), "plot": str(png)})


from hwnas import fewshot as _fewshot  # noqa: E402,F401  (registers the "fewshot" kind)
