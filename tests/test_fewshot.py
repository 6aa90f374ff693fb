"""Structural features and the few-shot predictor (hwnas.structure, hwnas.fewshot)."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_table

from hwnas.fewshot import (Candidate, FewShotPredictor, baselines, candidates, ceiling,
                           fit_few_shot, loo_weights)
from hwnas.lut import write_table
from hwnas.ops import count_batch, ops
from hwnas.predictor import PredictorError, load_predictor
from hwnas.profile import subnet_items
from hwnas.structure import feature_names, op_feature_names, op_features, structural_features

FP = {"device": "dev", "cpu": "x", "threads": 1, "batch": 1, "runtime": "onnxruntime"}


def test_structural_features_are_the_sums_of_each_ops_features(default, small):
    for space in (default, small):
        archs = space.sample(30, seed=3)
        F = structural_features(archs, space)
        names = feature_names(space)
        assert F.shape == (30, len(names)) and len(set(names)) == len(names)
        col = names.index
        per_op = op_feature_names(space)
        for a, row in zip(archs, F):
            loop = np.sum([op_features(op, space.kernels) for op in ops(a, space)], axis=0)
            assert row[:len(per_op)] == pytest.approx(loop)
            assert row[col("blocks")] == sum(a.d) and row[col("resolution")] == a.r
            assert sum(row[col(f"kernel{k}")] for k in space.kernels) == sum(a.d)
            assert sum(row[col(f"expand{e:g}")] for e in space.expands) == sum(a.d)
            assert [row[col(f"stage{s}_depth")] for s in range(space.n_stages)] == list(a.d)
        counts = count_batch(archs, space)
        macs = sum(F[:, col(n)] for n in per_op if n.endswith("macs") or "_macs_" in n)
        assert macs == pytest.approx(counts[:, 0] / 1e6)
        assert F[:, col("macs")] == pytest.approx(counts[:, 0] / 1e6)
        assert F[:, col("weight_mb")] == pytest.approx(counts[:, 1] * 4 / 1e6)


def _device(F, names, **weights):
    """A synthetic device: latency = sum(weight * feature) + 0.05 ms."""
    return sum(w * F[:, names.index(n)] for n, w in weights.items()) + 0.05


def test_it_learns_a_device_whose_cost_is_not_macs(small):
    # depthwise 7x7 MACs cost 30x other MACs (XNNPACK-like), and every layer has a
    # dispatch cost: MACs alone rank it poorly, the structural model gets it exactly
    archs = small.sample(200, seed=1)
    F, names = structural_features(archs, small), feature_names(small)
    y = _device(F, names, pw_macs=0.01, dw_macs_k7=0.3, layers=0.004)
    fs = FewShotPredictor(space=small).fit(archs[:20], y[:20])
    assert fs.choice.name == "structure"
    m = fs.metrics(archs[20:], y[20:])
    assert m["within_5pct"] == 1.0 and m["spearman_rho"] > 0.99
    base = baselines(fs, archs[:20], y[:20], archs[20:])
    assert set(base) == {"macs-linear", "blocks-linear"}  # no LUT, so no LUT-linear
    macs_err = np.abs(base["macs-linear"] - y[20:]) / y[20:]
    assert np.mean(macs_err <= 0.10) < 0.9  # what counting MACs alone would have given


def test_when_macs_are_the_truth_the_choice_falls_back_to_macs(small):
    archs = small.sample(120, seed=2)
    y = count_batch(archs, small)[:, 0] * 1e-6 * 0.4 + 0.3
    fs = FewShotPredictor(space=small).fit(archs[:20], y[:20])
    assert fs.choice.name == "macs-linear"
    assert fs.predict(archs[20:]) == pytest.approx(y[20:], rel=1e-6)


def test_candidates_need_two_samples_per_coefficient_and_build_on_the_lut(small):
    names = feature_names(small)
    few = {c.name: c for c in candidates(names, small, k=10)}
    assert set(few) == {"macs-linear", "blocks-linear"}  # structure has 7 coefficients
    assert "structure" in {c.name for c in candidates(names, small, k=14)}
    with_lut = candidates(names + ["lut", "prior:x"], small, k=50)
    assert {c.name for c in with_lut} == {"lut-linear", "lut+layers", "lut+structure",
                                         "lut+prior:x"}
    assert all("lut" in c.columns for c in with_lut)


def test_loo_weights_share_the_prediction_by_cross_validated_error():
    w = loo_weights({"a": 0.05, "b": 0.05 * 1.3, "c": 0.5})
    assert list(w) == ["a", "b"] and w["a"] / w["b"] == pytest.approx(np.e)  # c dropped
    assert sum(w.values()) == pytest.approx(1.0)
    assert loo_weights({"exact": 0.0, "close": 0.01}) == {"exact": 1.0}
    assert loo_weights({"a": 0.1, "b": 0.1}) == {"a": 0.5, "b": 0.5}


def test_slopes_of_cost_columns_stay_non_negative(small):
    archs = small.sample(60, seed=4)
    F = structural_features(archs, small)
    y = np.random.default_rng(0).uniform(1, 2, len(archs))  # noise: no structure to learn
    for cand in candidates(feature_names(small), small):
        cols = [feature_names(small).index(c) for c in cand.columns]
        coef = cand.fit(F[:, cols], y)
        if cand.nonneg:
            assert np.all(coef[:-1] >= 0), cand.name


def test_a_cost_model_has_no_negative_fixed_cost():
    """Fitted on large nets only, a line with a negative intercept predicts a small net far
    too fast (a cpu-tflite subnet of 1.46 ms, 30% under, from nets of 4-27 ms): cost
    models keep the intercept >= 0 as they keep slopes; the signed baselines do not."""
    x = np.linspace(4, 27, 20)[:, None]
    y = 1.1 * x[:, 0] - 0.8 + 0.05 * np.sin(x[:, 0])  # what such a fit finds: a negative fixed cost
    signed = Candidate("lut-linear", ("lut",), nonneg=False).fit(x, y)
    cost = Candidate("lut+layers", ("lut",)).fit(x, y)
    assert signed[-1] < -0.5 and cost[-1] >= 0 and cost[0] > 0
    small = np.array([[1.4]])
    assert Candidate.apply(cost, small)[0] > Candidate.apply(signed, small)[0]


def test_lut_and_prior_columns_round_trip_through_files(tmp_path, small):
    table = synthetic_table(tmp_path / "dev.parquet", small, FP)
    other = synthetic_table(tmp_path / "other.parquet", small, {**FP, "device": "other"},
                            seed=5)
    archs = small.sample(80, seed=6)
    prior = FewShotPredictor(other).fit(archs[:30], other.predict(archs[:30]) * 2)
    prior.save(tmp_path / "other.predictor.json")
    prior = load_predictor(tmp_path / "other.predictor.json")
    y = 1.2 * table.predict(archs) + 0.1 * other.predict(archs)
    fs = FewShotPredictor(table, priors={"other": prior}).fit(archs[:25], y[:25])
    assert fs.columns[-2:] == ["lut", "prior:other"]
    assert any(c.name == "lut-linear" for c in candidates(fs.columns, small))
    path = fs.save(tmp_path / "dev.predictor.json")
    doc = json.loads(path.read_text())
    assert doc["kind"] == "fewshot" and doc["state"]["priors"] == {"other":
                                                                    "other.predictor.json"}
    back = load_predictor(path)
    assert back.choice == fs.choice and back.predict(archs) == pytest.approx(fs.predict(archs))
    p, std = back.predict_with_uncertainty(archs)
    assert np.all(std >= 0) and std == pytest.approx(np.abs(p) * fs.rel_std)
    (tmp_path / "other.predictor.json").unlink()
    with pytest.raises(PredictorError, match="prior 'other'"):
        load_predictor(path)


def test_too_few_samples_and_bad_settings_are_refused(small):
    archs = small.sample(10, seed=0)
    with pytest.raises(PredictorError, match="at least 5"):
        FewShotPredictor(space=small).fit(archs[:4], np.ones(4))
    with pytest.raises(PredictorError, match="use_lut"):
        FewShotPredictor(space=small, use_lut="yes")
    with pytest.raises(PredictorError, match="prior 'x'"):
        FewShotPredictor(space=small, priors={"x": object()})


def test_ceiling_refits_the_chosen_model_on_folds(small):
    archs = small.sample(100, seed=7)
    F, names = structural_features(archs, small), feature_names(small)
    y = _device(F, names, pw_macs=0.02, layers=0.01)
    fs = FewShotPredictor(space=small).fit(archs[:20], y[:20])
    c = ceiling(fs, archs, y)
    assert c["n"] == 100 and c["within_5pct"] == 1.0
    assert sum(w for _, w, _ in fs.members) == pytest.approx(1.0)
    assert all(isinstance(Candidate.apply(coef, np.zeros((1, len(c.columns))))[0], float)
               for c, _, coef in fs.members)


def _subnet_table(path, space, archs, y, fp):
    rows = [{**it.row, "latency_ms": v, "p10_ms": v, "p90_ms": v, "spread": 0.0, "count": 5,
             "attempts": 1} for it, v in zip(subnet_items(archs, space), y)]
    write_table(pd.DataFrame(rows), path, {"fingerprint": fp, "space": space.to_dict()})


def test_fit_with_k_reports_baselines_and_ceiling_and_needs_no_lut(tmp_path, small):
    archs = small.sample(60, seed=8)
    F, names = structural_features(archs, small), feature_names(small)
    y = _device(F, names, pw_macs=0.02, dw_macs_k5=0.05, layers=0.003)
    _subnet_table(tmp_path / "dev.subnets.parquet", small, archs, y, FP)  # no op table
    report = fit_few_shot("dev", k=20, lut_dir=tmp_path)
    names_ = list(report.rows)
    assert names_[0].startswith("fewshot: ") and "macs-linear" in names_
    assert "blocks-linear" in names_ and "lut-linear" not in names_
    assert names_[-1].startswith("ceiling: ") and report.rows[names_[-1]]["n"] == 60
    assert report.rows[names_[0]]["n"] == 40
    assert report.rows[names_[0]]["mape"] <= min(report.rows[b]["mape"]
                                                for b in ("macs-linear", "blocks-linear"))
    saved = load_predictor(tmp_path / "dev.predictor.json")
    assert saved.kind == "fewshot" and saved.extra["k"] == 20
    assert (tmp_path / "dev.predictor.png").exists()
    with pytest.raises(PredictorError, match=r"--k 60 does not fit dev's 60 measured subnets"):
        fit_few_shot("dev", k=60, lut_dir=tmp_path)
    with pytest.raises(PredictorError, match="prior 'nope'"):
        fit_few_shot("dev", k=20, lut_dir=tmp_path, priors=["nope"])
