"""On-device verification: a search whose predictor is wrong still reports archs that meet
their budget when measured (hwnas.search.verify), with real ONNX Runtime measurements."""

import json

import numpy as np
import pandas as pd
import pytest

from hwnas.search import SearchConfig, search


class Optimistic:
    """A predictor that promises 40% less latency than the device delivers (what a table
    measured on a faster machine gives), with a small stated uncertainty."""

    kind = "optimistic"

    def __init__(self, space):
        from hwnas.ops import count_batch

        self.space = space
        self.fingerprint = {}
        self._count = count_batch

    def predict_with_uncertainty(self, X):
        macs = self._count(X if isinstance(X, np.ndarray) else list(X), self.space)[:, 0] / 1e6
        p = 0.02 + 0.02 * macs  # ms; roughly 0.6x of ONNX Runtime's here
        return p, 0.05 * p

    def predict(self, X):
        return self.predict_with_uncertainty(X)[0]


def _accuracy(archs):
    return np.array([sum(a.d) / 20 + a.r / 1000 for a in archs])  # bigger is better


@pytest.mark.slow
def test_best_per_budget_is_measured_within_its_budget(tmp_path, small):
    from hwnas.devices import load_device
    from hwnas.ops import build_network, ops
    from hwnas.backends import get_backend
    from hwnas.profile import time_runner

    pred = Optimistic(small)
    mid = small.arch(r=40, d=(3, 3, 3, 3, 3), k=(5,) * 20, e=(4,) * 20)
    dev = load_device("cpu-onnxruntime")
    # the budget: 1.3x what a middle arch measures here (whatever the machine's speed today),
    # so that about half the space meets it even when the host slows down by a quarter during
    # the search (seen on CI), and the optimistic predictor promises far more
    runner = get_backend(dev, tmp_path / "m").prepare(build_network(ops(mid, small)),
                                                      (1, 3, mid.r, mid.r), "mid")
    budget = round(1.3 * float(time_runner(runner, dev.protocol)["latency_ms"]), 4)
    assert pred.predict([mid])[0] < 0.7 * budget  # the predictor is optimistic here
    cfg = SearchConfig(space="small", objectives=("acc", "latency:cpu-onnxruntime"),
                       budgets_ms=(budget,), algorithm="nsga2", evaluations=24, pop_size=8,
                       verify="on", verify_limit=6, lut_dir=str(tmp_path / "nolut"))
    res = search(cfg, tmp_path / "run", accuracy=_accuracy,
                 predictors={"cpu-onnxruntime": pred}, progress=False, plots=False)
    v = res.verify
    assert v["device"] == "cpu-onnxruntime" and v["in_search"] <= 6
    assert v["measurements"] >= 1 and v["measured_now"] == v["measurements"]
    assert v["measured_in"] == "a new process"  # as the tables were timed
    best = res.best[budget]
    assert best["latency:cpu-onnxruntime:measured"] is True
    assert v["margin"] == cfg.verify_margin == 0.03  # measured at least 3% under the budget
    assert best["latency:cpu-onnxruntime"] * 1.03 <= budget
    assert v["confirmed"][f"{budget:g}"]["key"] == best["key"]
    measured = pd.read_parquet(tmp_path / "run" / "measured.parquet")
    assert set(measured["key"]) >= {best["key"]} and (measured["latency_ms"] > 0).all()
    # the optimistic predictor was corrected upwards by what was measured
    assert v["correction"][0] > 0.1
    # what was measured is what is reported: the row, the file of measurements, the summary
    row = measured[measured["key"] == best["key"]].iloc[-1]
    assert row["latency_ms"] == pytest.approx(best["latency:cpu-onnxruntime"]) and \
        row["latency_ms"] <= budget
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["verify"]["measurements"] == v["measurements"]
    # a resumed run replays the measurements instead of taking them again
    again_res = search(None, tmp_path / "run", resume=True, accuracy=_accuracy,
                       predictors={"cpu-onnxruntime": pred}, progress=False, plots=False)
    assert again_res.verify["measured_now"] == 0
    assert again_res.best[budget]["key"] == best["key"]
    # ... also when the machine has drifted since (--allow-drift scales today's predictions):
    # the run keeps the scale it started with, so the same archs straddle the budget, are
    # answered from the store, and no arch is evaluated anew (seen on CI: 12 new archs)
    from hwnas.probe import Drift, ScaledPredictor

    assert json.loads((tmp_path / "run" / "drift.json").read_text()) == {
        "cpu-onnxruntime": None}
    for ratio in (0.8, 1.25):
        drifted = ScaledPredictor(pred, Drift(ratio, "drifted for the test", scaled=True))
        asked = []
        again_res = search(None, tmp_path / "run", resume=True,
                           accuracy=lambda a: asked.append(len(a)) or _accuracy(a),
                           predictors={"cpu-onnxruntime": drifted}, progress=False,
                           plots=False)
        assert not asked and again_res.verify["measured_now"] == 0
        assert list(again_res.archive["key"]) == list(res.archive["key"])
        assert again_res.best[budget]["key"] == best["key"]
    # a damaged record is refused, naming the file and what it must hold
    from hwnas.search import SearchError

    (tmp_path / "run" / "drift.json").write_text('{"cpu-onnxruntime": "fast"}')
    with pytest.raises(SearchError, match="drift ratio of 'cpu-onnxruntime' must be a "
                                          "positive number or null, found 'fast'"):
        search(None, tmp_path / "run", resume=True, accuracy=_accuracy,
               predictors={"cpu-onnxruntime": pred}, progress=False, plots=False)


def test_verify_on_needs_the_device_here_and_off_measures_nothing(tmp_path, small):
    from hwnas.search import SearchError

    pred = Optimistic(small)
    cfg = SearchConfig(space="small", objectives=("acc", "latency:cuda-torch"),
                       budgets_ms=(0.5,), evaluations=8, pop_size=4, verify="on")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SearchError, match="--verify needs cuda-torch on this machine"):
            search(cfg, tmp_path / "a", accuracy=_accuracy, predictors={"cuda-torch": pred},
                   progress=False, plots=False)
    off = SearchConfig(space="small", objectives=("acc", "latency:cpu-onnxruntime"),
                       budgets_ms=(0.5,), evaluations=8, pop_size=4, verify="off")
    res = search(off, tmp_path / "b", accuracy=_accuracy,
                 predictors={"cpu-onnxruntime": pred}, progress=False, plots=False)
    assert res.verify is None and not (tmp_path / "b" / "measured.parquet").exists()
    with pytest.raises(SearchError, match="verify='sometimes'"):
        SearchConfig(verify="sometimes")


def test_a_drift_scaled_prediction_is_checked_in_its_own_terms(tmp_path, small, monkeypatch):
    """With --allow-drift the predictions are today's (the table's times the drift ratio):
    the clock's table subnets are chosen near the unscaled prediction, and the latency at
    the table's speed is put back in today's terms before it meets a budget, by how much
    slower those subnets ran here (the median over the run's checks), not by the probes'
    ratio; predictions in the table's own terms take it as it is."""
    from hwnas.devices import load_device
    from hwnas.ops import encode_batch
    from hwnas.probe import Drift, ScaledPredictor
    from hwnas.search import verify

    asked = []

    def timed_beside_table(device, space, archs, cache_dir, lut_dir, near_ms):
        asked.append(list(near_ms))  # the host now runs at 1.5x the table's times
        return [{"latency_ms": 3.0, "at_table_speed_ms": 2.0, "drift": 1.5, "spread": 0.01}
                for _ in archs]

    monkeypatch.setattr(verify, "time_archs", timed_beside_table)
    base, arch = Optimistic(small), small.smallest()
    X = encode_batch([arch], small)
    for ratio, expected in ((1.3, 3.0), (None, 2.0)):  # probes: 1.3, the subnets: 1.5
        pred = base if ratio is None else ScaledPredictor(base, Drift(ratio, "test", True))
        folder = tmp_path / str(ratio)
        v = verify.Verifier(load_device("cpu-onnxruntime"), small, pred, (1.0,), folder,
                            lut_dir=tmp_path / "lut")
        assert v.measure(X)[0] == pytest.approx(expected)
        assert asked.pop() == [pytest.approx(base.predict([arch])[0])]
        row = pd.read_parquet(folder / "measured.parquet").iloc[0]
        assert row["raw_ms"] == 3.0 and row["latency_ms"] == pytest.approx(expected)
        assert row["drift_scale"] == (ratio or 1.0)
        assert row["to_today"] == pytest.approx(1.5 if ratio else 1.0)

    # the ratio is the median over every check of the process on those tables (and the
    # stored ones of a resumed run, counted once): a run in a slow phase is not alone
    monkeypatch.setattr(verify, "_CLOCKS", {})
    monkeypatch.setattr(verify, "time_archs", lambda *a: [
        {"latency_ms": 3.4, "at_table_speed_ms": 2.0, "drift": 1.7, "spread": 0.01}])
    pred = ScaledPredictor(base, Drift(1.3, "test", True))
    v = verify.Verifier(load_device("cpu-onnxruntime"), small, pred, (1.0,), tmp_path / "1.3",
                        lut_dir=tmp_path / "lut")
    assert list(v.clocks.values()) == [1.5]  # resumed: the stored check
    again = verify.Verifier(load_device("cpu-onnxruntime"), small, pred, (1.0,),
                            tmp_path / "1.3", lut_dir=tmp_path / "lut")
    assert again.clocks is v.clocks and len(v.clocks) == 1  # the same run opened twice: once
    other = encode_batch([small.largest()], small)
    assert v.measure(other)[0] == pytest.approx(2.0 * 1.6)
    assert v.summary()["to_today"] == pytest.approx(1.6)
    assert v.measure(X)[0] == pytest.approx(3.0)  # the stored figure, not measured again
    w = verify.Verifier(load_device("cpu-onnxruntime"), small, pred, (1.0,), tmp_path / "new",
                        lut_dir=tmp_path / "lut")
    assert w.today() == pytest.approx(1.6)  # a new run of the same process starts from both


def test_the_timing_process_only_loads_what_was_converted_ahead(tmp_path, small, monkeypatch):
    """The verifier converts each arch's network and the table subnets it is timed beside
    before it starts the process that times them: an export in that process slowed the
    next measurement there (5% on the small space). Timing after convert_ahead exports
    nothing."""
    import hwnas.backends.onnxrt
    from hwnas.devices import load_device
    from hwnas.lut import read_table
    from hwnas.profile import profile
    from hwnas.search import verify

    profile("cpu-onnxruntime", small, resolutions=[32], out_dir=tmp_path / "lut",
            progress=False, op_list=[], subnets=8)
    table = read_table(tmp_path / "lut" / "cpu-onnxruntime.subnets.parquet", "subnets")[0]
    device = load_device("cpu-onnxruntime")
    archs = small.sample(2, np.random.default_rng(5))
    near = [float(table["latency_ms"].median())] * len(archs)
    cache = tmp_path / "cache"
    verify.convert_ahead(device, small, archs, cache, tmp_path / "lut", near)
    assert len(list(cache.glob("*.onnx"))) == len(archs)

    def no_export(*args, **kwargs):
        raise AssertionError("exported in the timing process")

    monkeypatch.setattr(hwnas.backends.onnxrt, "to_onnx", no_export)
    stats = verify.time_archs(device, small, archs, cache, tmp_path / "lut", near)
    assert all(s["clock"].endswith("profiled subnets") for s in stats)  # the table's
    assert all(s["at_table_speed_ms"] > 0 for s in stats)
    # without the conversion ahead, the same timing would have had to export
    with pytest.raises(AssertionError, match="timing process"):
        verify.time_archs(device, small, archs, tmp_path / "cold", tmp_path / "lut", near)
