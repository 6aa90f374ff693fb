import json

import numpy as np
import pytest
from helpers import synthetic_table

from hwnas.fewshot import FewShotPredictor
from hwnas.ops import count_batch
from hwnas.predictor import (LutLinear, LutSum, MacsLinear, PredictorError, TransferPredictor,
                             XGBoostPredictor, load_predictor, make_predictor, metrics,
                             split_subnets)

FP_A = {"device": "a", "cpu": "x", "threads": 1, "runtime": "onnxruntime"}
FP_B = {"device": "b", "cpu": "x", "threads": 1, "runtime": "torch"}


def _table(tmp_path, space, name, fp, scale=1.0, seed=0):
    return synthetic_table(tmp_path / f"{name}.parquet", space, fp, scale, seed)


def _truth(table, archs, space, a=1.3, b=0.2, fusion=0.15):
    """A synthetic device: scaled LUT sum, a per-call offset, and a 'fusion' saving that
    grows with the number of blocks (what a plain LUT sum misses)."""
    lut = table.predict(archs)
    blocks = np.array([sum(x.d) for x in archs])
    return a * lut + b - fusion * lut * (blocks - 10) / 10


@pytest.fixture(scope="module")
def data(tmp_path_factory, small):
    tmp = tmp_path_factory.mktemp("pred")
    table = _table(tmp, small, "a", FP_A)
    archs = small.sample(400, seed=0)
    y = _truth(table, archs, small)
    return tmp, table, archs, y


def test_metrics_on_a_constructed_example():
    m = metrics([1.0, 2.1, 3.3, 3.9], [1.0, 2.0, 3.0, 4.0])
    assert m["n"] == 4
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0 + 0.01 + 0.09 + 0.01) / 4))
    assert m["mape"] == pytest.approx((0 + 0.05 + 0.1 + 0.025) / 4)
    assert m["within_5pct"] == 0.75  # 0%, 5% (on the edge), 2.5% in; 10% out
    assert m["within_10pct"] == 1.0
    assert m["kendall_tau"] == pytest.approx(1.0) and m["spearman_rho"] == pytest.approx(1.0)
    swapped = metrics([2.0, 1.0], [1.0, 2.0])
    assert swapped["kendall_tau"] == pytest.approx(-1.0)
    with pytest.raises(PredictorError):
        metrics([1.0], [1.0, 2.0])


def test_lut_sum_and_linear_and_macs(data, small):
    tmp, table, archs, y = data
    assert np.allclose(LutSum(table).predict(archs), table.predict(archs))
    plain = _truth(table, archs, small, fusion=0.0)
    lin = LutLinear(table).fit(archs[:200], plain[:200])
    assert lin.coef == pytest.approx((1.3, 0.2))
    macs = MacsLinear(table).fit(archs[:200], count_batch(archs[:200], small)[:, 0] * 2e-6 + 1)
    assert macs.coef == pytest.approx((2.0, 1.0))


def test_xgboost_learns_what_the_lut_misses(data):
    tmp, table, archs, y = data
    tr, te = slice(0, 250), slice(250, 400)
    lin = LutLinear(table).fit(archs[tr], y[tr]).metrics(archs[te], y[te])
    xgb = XGBoostPredictor(table, n_estimators=200, ensemble=3).fit(archs[tr], y[tr])
    s = xgb.metrics(archs[te], y[te])
    assert xgb.score(archs[te], y[te]) == s["within_10pct"]  # one number, higher better
    assert s["mape"] < lin["mape"] / 2 and s["within_5pct"] > 0.95
    p, std = xgb.predict_with_uncertainty(archs[te])
    assert np.all(std >= 0) and np.any(std > 0) and np.allclose(p, xgb.predict(archs[te]))


def test_save_load_round_trips_give_identical_predictions(data, small):
    tmp, table, archs, y = data
    for kind in ("lut-sum", "lut-linear", "macs-linear", "xgboost"):
        params = {"n_estimators": 50, "ensemble": 2} if kind == "xgboost" else {}
        p = make_predictor(kind, table, **params).fit(archs[:100], y[:100])
        path = p.save(tmp / f"{kind}.predictor.json")
        doc = json.loads(path.read_text())
        assert doc["kind"] == kind and doc["train_hash"] and doc["fingerprint"] == FP_A
        q = load_predictor(path, space=small, fingerprint=FP_A)
        assert np.array_equal(p.predict(archs[100:]), q.predict(archs[100:]))
        if kind == "xgboost":
            assert len(doc["state"]["models"]) == 2 and doc["state"]["feature_names"][0] == "g0"
            assert "lut_sum" in doc["state"]["feature_names"]


def test_every_loaded_kind_refits_as_it_was_made(data, small, tmp_path):
    """Loading goes through ``__init__`` with the saved parameters, so a loaded predictor
    is a whole one: it refits to exactly what a new one with those parameters fits."""
    from hwnas.predictor import PREDICTORS

    _, table, archs, y = data
    base = XGBoostPredictor(table, n_estimators=30, ensemble=2, seed=4).fit(archs[:80], y[:80])
    made = {"lut-sum": LutSum(table), "lut-linear": LutLinear(table, offset=False),
            "macs-linear": MacsLinear(table), "xgboost": XGBoostPredictor(
                table, n_estimators=40, ensemble=2, max_depth=2, seed=3),
            "transfer": TransferPredictor(base, table),
            "fewshot": FewShotPredictor(table, use_lut=False)}
    assert set(made) == set(PREDICTORS.choices())  # every kind there is
    for kind, p in made.items():
        p.fit(archs[:60], y[:60])
        loaded = load_predictor(p.save(tmp_path / f"{kind}.json"))
        assert type(loaded) is type(p) and loaded.get_params() == p.get_params()
        refit = loaded.fit(archs[60:140], y[60:140]).predict(archs[200:])
        fresh = p.fit(archs[60:140], y[60:140]).predict(archs[200:])
        assert np.array_equal(refit, fresh), kind
    assert load_predictor(tmp_path / "lut-linear.json").offset is False
    assert load_predictor(tmp_path / "fewshot.json").use_lut is False
    with pytest.raises(PredictorError, match="offset='yes'"):
        LutLinear(table, offset="yes")


def test_refusals(data, small, default, tmp_path):
    _, table, archs, y = data
    path = LutLinear(table).fit(archs[:50], y[:50]).save(tmp_path / "p.json")
    with pytest.raises(PredictorError, match="fitted for space 'small'"):
        load_predictor(path, space=default)
    with pytest.raises(PredictorError, match="another device.*device: 'a' vs 'b'.*allow"):
        load_predictor(path, fingerprint=FP_B)
    p = load_predictor(path, fingerprint=FP_B, allow_mismatch=True)
    assert np.allclose(p.predict(archs[:5]), LutLinear(table).fit(archs[:50], y[:50]).predict(
        archs[:5]))
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(PredictorError, match="not an hwnas predictor"):
        load_predictor(tmp_path / "junk.json")
    with pytest.raises(PredictorError, match="not fitted"):
        LutLinear(table).predict(archs[:2])
    with pytest.raises(PredictorError, match="positive"):
        LutLinear(table).fit(archs[:3], [1.0, -1.0, 2.0])
    with pytest.raises(PredictorError, match="3 archs but"):
        LutLinear(table).fit(archs[:3], [1.0, 2.0])
    with pytest.raises(PredictorError, match="max_depth=0.*1..16"):
        XGBoostPredictor(table, max_depth=0)
    with pytest.raises(PredictorError, match="unknown XGBoost parameter"):
        XGBoostPredictor(table, depth=3)
    with pytest.raises(PredictorError, match="unknown predictor 'gp'"):
        make_predictor("gp", table)


def test_few_shot_transfer(data, small, tmp_path):
    _, table_a, archs, y_a = data
    base = XGBoostPredictor(table_a, n_estimators=200, ensemble=3).fit(archs[:250], y_a[:250])
    table_b = _table(tmp_path, small, "b", FP_B, scale=1.0, seed=1)  # another device's LUT
    y_b = 1.6 * _truth(table_b, archs, small)  # same behaviour, slower device
    k = 20
    t = TransferPredictor(base, table_b).fit(archs[:k], y_b[:k])
    s = t.metrics(archs[250:], y_b[250:])
    scratch = XGBoostPredictor(table_b, n_estimators=200, ensemble=3).fit(archs[:k], y_b[:k])
    assert s["within_10pct"] >= 0.95 and s["spearman_rho"] >= 0.95
    assert s["mape"] < scratch.metrics(archs[250:], y_b[250:])["mape"]
    path = t.save(tmp_path / "b.predictor.json")
    again = load_predictor(path, fingerprint=FP_B)
    assert np.array_equal(again.predict(archs[250:]), t.predict(archs[250:]))


def test_split_is_deterministic_and_disjoint():
    keys = [f"k{i}" for i in range(50)]
    tr, te = split_subnets(keys, 30, seed=1)
    assert len(tr) == 30 and len(te) == 20 and not set(tr) & set(te)
    assert np.array_equal(tr, split_subnets(keys, 30, seed=1)[0])
    assert not np.array_equal(tr, split_subnets(keys, 30, seed=2)[0])
    with pytest.raises(PredictorError):
        split_subnets(keys, 50)
