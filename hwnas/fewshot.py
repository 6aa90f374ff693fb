"""Few-shot latency prediction: a predictor for a device from k measured subnets.

A new device (another CPU, a batch size, a fused runtime) rarely comes with hundreds of
measured subnets. :class:`FewShotPredictor` learns from k of them (k = 10-50) with small
linear models over evidence that means the same on every device:

* the structural features of the arch (``hwnas.structure``: MACs by layer type, depthwise
  MACs per kernel size, bytes moved, layers, blocks, resolution);
* the device's own lookup-table sum, when it has a LUT;
* other devices' predictors ("priors"), as predicted latencies.

Each candidate is a weighted least-squares line through a few of these columns (weights
1/y, so it minimises *relative* error; the slopes of cost columns are kept non-negative, so
a model cannot learn that more MACs make a net faster, and so is its intercept: a negative
fixed cost fitted on large nets predicted the smallest cpu-tflite subnet 30% too fast).
Only candidates with at least two samples per coefficient are tried, and with a LUT only
those built on it (the device's own per-op timings): with k = 10 noisy samples,
leave-one-out cannot tell a MACs line from the LUT line, and picking the MACs line lost 3-8
points held out. The prediction averages the
candidates weighted by their leave-one-out error (``exp(-(MAPE / best - 1) / 0.3)``; choosing
the single best instead lost to a trivial baseline in 7 of 12 regime/k cells, averaging in
none, see README "Few-shot"), and every candidate's score and weight are kept. The trivial
baselines (MACs-linear, block-count-linear, LUT-linear) are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls

from hwnas.lut import LatencyTable
from hwnas.predictor import (PREDICTORS, Predictor, PredictorError, _as_X, _as_y,
                             device_subnets)
from hwnas.space import SearchSpace
from hwnas.structure import feature_names, op_feature_names, structural_features

LUT = "lut"
PRIOR = "prior:"
MAX_LOO = 60          # up to this many samples, leave-one-out; above, 10-fold
MIN_SAMPLES = 5
SAMPLES_PER_COEF = 2  # a candidate is tried when k >= this x its coefficients
WEIGHT_SCALE = 0.3    # candidates this share worse in LOO MAPE than the best weigh e times less
MIN_WEIGHT = 1e-3     # lighter members are dropped


@dataclass(frozen=True)
class Candidate:
    """A linear model over named columns: ``intercept + sum(coef * column)``, fitted by
    least squares on relative error, slopes and intercept >= 0 when ``nonneg``."""

    name: str
    columns: tuple[str, ...]
    nonneg: bool = True

    def fit(self, F: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coefficients (slopes then intercept) for the design ``F`` (these columns)."""
        w = 1.0 / y
        scale = np.maximum(np.abs(F).max(0), 1e-12)
        A = np.column_stack([F / scale, np.ones(len(F))]) * w[:, None]
        b = y * w
        if self.nonneg:  # intercept >= 0 too: a fixed cost, never a negative one
            coef, _ = nnls(A, b, maxiter=50 * A.shape[1])
        else:
            coef = np.linalg.lstsq(A, b, rcond=None)[0]
        coef[:-1] /= scale
        return coef

    @staticmethod
    def apply(coef: np.ndarray, F: np.ndarray) -> np.ndarray:
        return F @ coef[:-1] + coef[-1]


def candidates(columns: Sequence[str], space: SearchSpace, k: int | None = None
               ) -> list[Candidate]:
    """The models tried on a fit of ``k`` samples, given which columns exist: with a LUT
    column, the models built on it (and on each prior); without, MACs-, block- and
    structure-based ones (and each prior's). Small on purpose: with k = 20 samples, choosing
    among many models overfits the choice."""
    ops = tuple(n for n in op_feature_names(space) if n == "pw_macs" or n.startswith("dw_macs"))
    ops += ("act_mb", "layers")
    priors = [c for c in columns if c.startswith(PRIOR)]
    if LUT in columns:
        out = [Candidate("lut-linear", (LUT,), nonneg=False),
               Candidate("lut+layers", (LUT, "layers")),
               Candidate("lut+structure", (LUT,) + ops)]
        out += [Candidate(f"lut+{col}", (LUT, col)) for col in priors]
    else:
        out = [Candidate("macs-linear", ("macs",), nonneg=False),
               Candidate("blocks-linear", ("blocks",), nonneg=False),
               Candidate("structure", ops)]
        for col in priors:
            out += [Candidate(f"{col}-linear", (col,), nonneg=False),
                    Candidate(f"{col}+structure", (col,) + ops)]
    if k is not None:
        out = [c for c in out if SAMPLES_PER_COEF * (len(c.columns) + 1) <= k]
    return out


BASELINES = ("macs-linear", "blocks-linear", "lut-linear")


def baseline_candidates(columns: Sequence[str]) -> list[Candidate]:
    """The trivial baselines reported beside the predictor (LUT-linear with a LUT)."""
    out = [Candidate("macs-linear", ("macs",), nonneg=False),
           Candidate("blocks-linear", ("blocks",), nonneg=False)]
    return out + [Candidate("lut-linear", (LUT,), nonneg=False)] * (LUT in columns)


def _scores(err: np.ndarray) -> dict[str, float]:
    """MAPE, share within ±10% and RMS of relative held-out errors."""
    return {"mape": float(np.mean(np.abs(err))),
            "within_10pct": float(np.mean(np.abs(err) <= 0.10 + 1e-12)),
            "rel_std": float(np.sqrt(np.mean(err ** 2)))}


def loo_weights(mape: Mapping[str, float]) -> dict[str, float]:
    """Each candidate's share of the prediction from its cross-validated MAPE (the best
    weighs most; those :data:`WEIGHT_SCALE` of its MAPE worse e times less; below
    :data:`MIN_WEIGHT` dropped)."""
    best = min(mape.values())
    scale = max(WEIGHT_SCALE * best, 1e-12)  # an exact fit takes it all
    w = {n: float(np.exp(-(v - best) / scale)) for n, v in mape.items()}
    total = sum(w.values())
    w = {n: v / total for n, v in w.items() if v / total >= MIN_WEIGHT}
    total = sum(w.values())
    return {n: v / total for n, v in sorted(w.items(), key=lambda kv: -kv[1])}


def folds(n: int, seed: int = 0) -> list[np.ndarray]:
    """Held-out index sets: one per sample up to :data:`MAX_LOO` samples, else 10."""
    if n <= MAX_LOO:
        return [np.array([i]) for i in range(n)]
    return np.array_split(np.random.default_rng(seed).permutation(n), 10)


def cv_errors(candidate: Candidate, F: np.ndarray, y: np.ndarray,
              held: Sequence[np.ndarray]) -> np.ndarray:
    """Relative error of each sample when it was held out."""
    err = np.empty(len(y))
    for idx in held:
        keep = np.ones(len(y), bool)
        keep[idx] = False
        coef = candidate.fit(F[keep], y[keep])
        err[idx] = (Candidate.apply(coef, F[idx]) - y[idx]) / y[idx]
    return err


class FewShotPredictor(Predictor):
    """Linear models over structural features (+ LUT sum, + other devices' predictions)
    fitted on k measured subnets, averaged with weights from cross-validation on those k."""

    kind = "fewshot"

    def __init__(self, table: LatencyTable | None = None, space: SearchSpace | None = None,
                 priors: Mapping[str, Predictor] | None = None, use_lut: bool = True) -> None:
        super().__init__(table, space)
        if not isinstance(use_lut, bool):
            raise PredictorError(f"fewshot use_lut={use_lut!r} is not allowed; must be True or "
                                 f"False")
        self.use_lut = use_lut and table is not None
        self.priors = dict(priors or {})
        for name, prior in self.priors.items():
            if not isinstance(prior, Predictor):
                raise PredictorError(f"fewshot prior {name!r} must be a fitted predictor, got "
                                     f"{type(prior).__name__}")
            if prior.space.id != self.space.id:
                raise PredictorError(f"fewshot prior {name!r} was fitted for space "
                                     f"{prior.space.name!r}, not {self.space.name!r}")
        self.columns = self._columns()
        # (candidate, weight, coefficients), heaviest first
        self.members: list[tuple[Candidate, float, np.ndarray]] = []
        self.rel_std = 0.0
        self.cv: dict[str, dict[str, float]] = {}

    @property
    def choice(self) -> Candidate | None:
        """The heaviest member (what the cross-validation liked best)."""
        return self.members[0][0] if self.members else None

    def _columns(self) -> list[str]:
        return (feature_names(self.space) + ([LUT] if self.use_lut else [])
                + [PRIOR + name for name in self.priors])

    def design(self, X: np.ndarray) -> np.ndarray:
        """Every column (see :meth:`_columns`) for an encoding matrix."""
        parts = [structural_features(X, self.space)]
        if self.use_lut:
            parts.append(np.asarray(self.table.predict(X), dtype=float)[:, None])
        for prior in self.priors.values():
            parts.append(np.asarray(prior.predict(X), dtype=float)[:, None])
        return np.column_stack(parts)

    def _select(self, candidate: Candidate, F: np.ndarray) -> np.ndarray:
        return F[:, [self.columns.index(c) for c in candidate.columns]]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if len(y) < MIN_SAMPLES:
            raise PredictorError(f"a few-shot predictor needs at least {MIN_SAMPLES} measured "
                                 f"subnets, got {len(y)}")
        F = self.design(X)
        held = folds(len(y))
        errors, tried = {}, {}
        self.cv = {}
        for cand in candidates(self.columns, self.space, len(y)):
            err = cv_errors(cand, self._select(cand, F), y, held)
            errors[cand.name], tried[cand.name] = err, cand
            self.cv[cand.name] = _scores(err)
        weights = loo_weights({n: v["mape"] for n, v in self.cv.items()})
        for name in self.cv:
            self.cv[name]["weight"] = weights.get(name, 0.0)
        self.members = [(tried[n], w, tried[n].fit(self._select(tried[n], F), y))
                        for n, w in weights.items()]
        # the average's own cross-validated error: the members' held-out errors, weighted
        self.cv["average"] = {**_scores(sum(w * errors[n] for n, w in weights.items())),
                              "weight": 1.0}
        self.rel_std = self.cv["average"]["rel_std"]

    def _predict(self, X: np.ndarray) -> np.ndarray:
        F = self.design(X)
        return sum(w * Candidate.apply(coef, self._select(c, F)) for c, w, coef in self.members)

    def _predict_std(self, X):
        p = self._predict(X)
        return p, np.abs(p) * self.rel_std  # the average's cross-validated error

    def describe(self) -> str:
        """Which models the cross-validation weighed how, and how the average scored."""
        cv = self.cv["average"]
        parts = ", ".join(f"{c.name} {w:.0%}" for c, w, _ in self.members)
        return (f"{parts} (leave-one-out MAPE {cv['mape']:.1%}, within ±10% "
                f"{cv['within_10pct']:.0%})")

    def get_params(self) -> dict[str, Any]:
        return {"use_lut": self.use_lut}

    @classmethod
    def _from_file(cls, table, space, params, state, path):
        priors = {}
        for name, rel in state.get("priors", {}).items():
            from hwnas.predictor import load_predictor

            try:
                priors[name] = load_predictor(Path(path).parent / rel, space=space)
            except PredictorError as exc:
                raise PredictorError(f"its prior {name!r} cannot be loaded: {exc}") from None
        return cls(table, space, priors=priors, **params)

    def _state(self, path):
        import os

        priors = {}
        for name, prior in self.priors.items():
            source = getattr(prior, "source", None)
            if source is None:
                raise PredictorError(f"prior {name!r} has no file; save it and load it with "
                                     f"load_predictor before saving this predictor")
            priors[name] = os.path.relpath(Path(source).resolve(), Path(path).parent.resolve())
        return {"members": [{"name": c.name, "columns": list(c.columns), "nonneg": c.nonneg,
                             "weight": w, "coef": coef.tolist()}
                            for c, w, coef in self.members],
                "rel_std": self.rel_std, "cv": self.cv, "columns": self.columns,
                "priors": priors}

    def _restore(self, state, path):
        if state["columns"] != self.columns:
            raise PredictorError("its feature columns differ from this hwnas's")
        self.members = []
        for m in state["members"]:
            cand = Candidate(m["name"], tuple(m["columns"]), bool(m["nonneg"]))
            if not set(cand.columns) <= set(self.columns):
                raise PredictorError(f"its member {cand.name!r} needs columns it does not have")
            coef = np.asarray(m["coef"], dtype=float)
            if coef.shape != (len(cand.columns) + 1,):
                raise PredictorError(f"its member {cand.name!r}: coefficients do not match "
                                     f"its columns")
            self.members.append((cand, float(m["weight"]), coef))
        if not self.members:
            raise PredictorError("it has no fitted members")
        self.rel_std = float(state["rel_std"])
        self.cv = dict(state.get("cv") or {})


PREDICTORS.register(FewShotPredictor.kind, FewShotPredictor)


def ceiling(predictor: FewShotPredictor, archs, latencies_ms, seed: int = 0
            ) -> dict[str, float]:
    """What the chosen model reaches with every measured subnet of the device: the same
    candidate fitted on 5-fold cross-validated splits of all of them (the figure to read a
    few-shot result against)."""
    from hwnas.predictor import metrics

    X = _as_X(archs, predictor.space)
    y = _as_y(latencies_ms, len(X))
    F = predictor.design(X)
    pred = np.zeros(len(y))
    for idx in np.array_split(np.random.default_rng(seed).permutation(len(y)), 5):
        keep = np.ones(len(y), bool)
        keep[idx] = False
        for c, w, _ in predictor.members:
            Fc = predictor._select(c, F)
            pred[idx] += w * Candidate.apply(c.fit(Fc[keep], y[keep]), Fc[idx])
    return metrics(pred, y)


def baselines(predictor: FewShotPredictor, train, y_train, test) -> dict[str, np.ndarray]:
    """The trivial baselines among ``predictor``'s candidates (MACs-linear, block-count-
    linear and, with a LUT, LUT-linear), each fitted on ``train``: predictions for
    ``test``."""
    Xa, Xb = _as_X(train, predictor.space), _as_X(test, predictor.space)
    y = _as_y(y_train, len(Xa))
    Fa, Fb = predictor.design(Xa), predictor.design(Xb)
    out = {}
    for cand in baseline_candidates(predictor.columns):
        coef = cand.fit(predictor._select(cand, Fa), y)
        out[cand.name] = Candidate.apply(coef, predictor._select(cand, Fb))
    return out


def fit_few_shot(device: str, k: int = 20, seed: int = 0, lut_dir: str | Path = "lut",
                 out: str | Path | None = None, use_lut: bool = True,
                 priors: Sequence[str] = (), space: SearchSpace | str | None = None):
    """``hwnas predictor fit --k``: fit a :class:`FewShotPredictor` for ``device`` on ``k``
    of its measured subnets (a seeded draw) with its LUT when it has one (and ``use_lut``)
    and the saved predictors of the ``priors`` devices; report it on the held-out rest
    beside the trivial baselines and its ceiling; save it and a scatter plot."""
    from hwnas.predictor import (Report, default_predictor_path, load_predictor, metrics,
                                 plot_predicted_vs_measured, split_subnets)

    table, sp, subs, archs, y = device_subnets(device, lut_dir, space)
    keys = list(subs["key"])
    if not MIN_SAMPLES <= k < len(keys):
        raise PredictorError(f"--k {k} does not fit {device}'s {len(keys)} measured subnets: "
                             f"k must be {MIN_SAMPLES}..{len(keys) - 1} (one or more held out "
                             f"to judge it); profile more with 'hwnas profile --device "
                             f"{device} --subnets N'")
    prior_models = {}
    for name in priors:
        path = default_predictor_path(name, lut_dir)
        if not path.exists():
            raise PredictorError(f"prior {name!r}: no predictor at {path}; fit one with 'hwnas "
                                 f"predictor fit --device {name}'")
        prior_models[name] = load_predictor(path, space=sp)
    tr, te = split_subnets(keys, k, seed)
    A, B = [archs[i] for i in tr], [archs[i] for i in te]
    pred = FewShotPredictor(table, sp, priors=prior_models, use_lut=use_lut).fit(A, y[tr])
    name = "fewshot: " + " + ".join(c.name for c, _, _ in pred.members)
    rows = {name: pred.metrics(B, y[te])}
    rows.update({name: metrics(p, y[te]) for name, p in baselines(pred, A, y[tr], B).items()})
    rows[f"ceiling: the same average, 5-fold CV on all {len(y)}"] = ceiling(pred, archs, y, seed)
    pred.extra = {"device": device, "seed": seed, "k": k, "choice": pred.describe(),
                  "statistic": subs.attrs["statistic"],
                  "train_keys": [keys[i] for i in tr], "heldout_keys": [keys[i] for i in te],
                  "heldout_metrics": rows[name]}
    out = Path(out) if out else default_predictor_path(device, lut_dir)
    pred.save(out)
    p, std = pred.predict_with_uncertainty(B)
    png = plot_predicted_vs_measured(p, y[te], out.with_suffix(".png"),
                                     f"{device}: fewshot, k={k}", std)
    evidence = ", ".join(["structure"] + ["LUT"] * pred.use_lut + list(prior_models))
    return Report(f"{device}: few-shot from {k} subnets ({evidence}), {len(te)} held out; "
                  f"weighed by leave-one-out: {pred.describe()}", rows,
                  {"predictor": str(out), "plot": str(png)})


__all__ = ["BASELINES", "Candidate", "FewShotPredictor", "baseline_candidates", "baselines",
           "candidates", "ceiling", "cv_errors", "fit_few_shot", "folds", "loo_weights"]
