"""Calibration probes: a table measured at another speed is caught (hwnas.probe)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from hwnas.devices import load_device
from hwnas.errors import LutError
from hwnas.lut import read_table, write_table
from hwnas.predictor import LutSum, device_predictor
from hwnas.probe import (PROBES, DriftError, ReferenceClock, ScaledPredictor, check_drift,
                         compare, drift_nets, measure_probes, reference_rows, table_probes)
from hwnas.profile import profile


@pytest.fixture(scope="module")
def small():
    """The small space at 32 px alone: a table of every op of it takes seconds."""
    from hwnas.space import get_space

    return get_space("small@32")


@pytest.fixture(scope="module")
def measured(tmp_path_factory, small):
    """A real ONNX Runtime table (the small space's ops at 32 px) with its probes, and a
    LUT-sum predictor saved beside it."""
    out = tmp_path_factory.mktemp("probe")
    profile("cpu-onnxruntime", small, resolutions=[32], out_dir=out, progress=False)
    from hwnas.lut import LatencyTable

    LutSum(LatencyTable.load(out / "cpu-onnxruntime.parquet")).save(
        out / "cpu-onnxruntime.predictor.json")
    return out


def _rescale(folder, factor):
    """Pretend the table was measured on a machine ``factor`` times as fast as this one is
    now (probes timed afresh: this VM's host drifts by more than 10% over minutes)."""
    path = folder / "cpu-onnxruntime.parquet"
    df, meta = read_table(path)
    # each probe's fastest of three timings, as the drift check keeps its fastest: one
    # timing in a slow phase made a 2x drift look like 1.24x
    times = [measure_probes(load_device("cpu-onnxruntime"))["ms"] for _ in range(3)]
    meta["probes"]["ms"] = {k: min(t[k] for t in times) * factor for k in times[0]}
    meta.pop("schema_version")
    write_table(df, path, meta)


def test_every_table_stores_its_probes(measured):
    _, meta = read_table(measured / "cpu-onnxruntime.parquet")
    probes = meta["probes"]
    assert set(probes["ms"]) == {op.key for op in PROBES}
    assert all(v > 0 for v in probes["ms"].values()) and probes["measured_at"]
    again = measure_probes(load_device("cpu-onnxruntime"))
    ratio, lo, hi = compare(probes, again)
    assert 0.5 < ratio < 2.0 and lo <= ratio <= hi  # one machine, two timings
    assert table_probes("cpu-onnxruntime", measured) == (probes, str(
        measured / "cpu-onnxruntime.parquet"))


def test_a_stale_table_is_refused_and_allow_drift_scales(tmp_path, measured, small):
    import shutil

    folder = tmp_path / "lut"
    shutil.copytree(measured, folder)
    _rescale(folder, 0.5)  # "measured" on a machine twice as fast
    with pytest.raises(DriftError, match=r"probes [12]\.\d\dx as long.*--allow-drift"):
        device_predictor("cpu-onnxruntime", small, folder)
    pred, how = device_predictor("cpu-onnxruntime", small, folder, allow_drift=True)
    assert isinstance(pred, ScaledPredictor) and f"scaled by {pred.drift.ratio:.2f}" in how
    assert 1.5 < pred.drift.ratio < 4.0  # twice as long, give or take the host's swings
    base = LutSum(pred.base.table)
    archs = [a for a in small.sample(40, seed=0) if a.r == 32][:5]
    assert pred.predict(archs) == pytest.approx(base.predict(archs) * pred.drift.ratio)
    # the command line: one line, exit 2, and the search proceeds with --allow-drift
    args = [sys.executable, "-m", "hwnas", "search", "--space", "small@32", "--device",
            "cpu-onnxruntime", "--objectives", "latency,params", "--evaluations", "8",
            "--pop-size", "4", "--lut", str(folder), "--out", str(tmp_path / "run")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "x as long" in r.stderr and "Traceback" not in r.stderr
    ok = subprocess.run(args + ["--allow-drift"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_drift_within_tolerance_passes_and_no_probes_is_said(tmp_path, measured, small):
    import shutil

    folder = tmp_path / "lut"
    shutil.copytree(measured, folder)
    for attempt in range(3):  # the table's probes as this machine runs them now (this VM's
        _rescale(folder, 1.0)  # host can swing by >10% between two timings under load)
        try:
            pred, how = device_predictor("cpu-onnxruntime", small, folder)
            break
        except DriftError:
            if attempt == 2:
                raise
    assert not isinstance(pred, ScaledPredictor) and "calibration probes" in how
    path = folder / "cpu-onnxruntime.parquet"
    df, meta = read_table(path)
    meta.pop("probes"), meta.pop("schema_version")
    write_table(df, path, meta)
    drift = check_drift("cpu-onnxruntime", None, str(path))
    assert not drift.checked and "no calibration probes" in drift.note
    _, how = device_predictor("cpu-onnxruntime", small, folder)
    assert "drift not checked" in how


def test_a_table_is_not_extended_at_another_speed(tmp_path, measured, small):
    import shutil

    folder = tmp_path / "lut"
    shutil.copytree(measured, folder)
    _rescale(folder, 3.0)
    path = folder / "cpu-onnxruntime.parquet"
    df, meta = read_table(path)
    meta.pop("schema_version")
    write_table(df.iloc[3:], path, meta)  # three ops still to measure
    with pytest.raises(LutError, match="cannot resume or extend.*mix two speeds.*--allow-drift"):
        profile("cpu-onnxruntime", small, resolutions=[32], out_dir=folder, progress=False)
    # asked to, it resumes, and the table and every prediction from it say the speeds mix
    res, _ = profile("cpu-onnxruntime", small, resolutions=[32], out_dir=folder,
                     progress=False, allow_drift=True)
    assert res.measured == 3 and len(res.table) == len(df)
    assert any("resumed anyway" in n for n in res.notes)
    (drift,) = read_table(path)[1]["resumed_across_drift"]
    assert drift["ratio"] < 0.9  # this machine now runs them about a third as long
    _, how = device_predictor("cpu-onnxruntime", small, folder, allow_drift=True)
    assert "resumed across a drift" in how


def test_probe_comparison_needs_common_probes():
    with pytest.raises(DriftError, match="share no probe"):
        compare({"ms": {"a": 1.0}}, {"ms": {"b": 1.0}})
    ratio, lo, hi = compare({"ms": {"a": 1.0, "b": 2.0, "c": 4.0}},
                            {"ms": {"a": 1.1, "b": 2.2, "c": 4.4}})
    assert ratio == pytest.approx(1.1) and np.isclose(lo, 1.1) and np.isclose(hi, 1.1)
    assert json.dumps(compare({"ms": {"a": 1.0}}, {"ms": {"a": 2.0}}))


def test_a_table_of_medians_is_refused_until_restated_as_its_p10(tmp_path, measured, small):
    """The device file measures the p10 and the table holds medians: predictions would be
    compared with measurements of another statistic. The refusal says how to restate it;
    restated, each row holds the p10 it recorded, and a model fitted on medians is refused
    in turn."""
    import shutil

    from hwnas.lut import restate
    from hwnas.predictor import PredictorError, XGBoostPredictor, load_predictor

    assert load_device("cpu-onnxruntime").protocol.statistic == "p10"
    folder = tmp_path / "lut"
    shutil.copytree(measured, folder)
    path = folder / "cpu-onnxruntime.parquet"
    df, meta = read_table(path)
    p10 = df["p10_ms"].to_numpy()
    df["latency_ms"] = p10 * 1.25  # the medians: above the p10
    meta["protocol"] = {**meta["protocol"], "statistic": "median"}
    meta.pop("schema_version")
    write_table(df, path, meta)
    with pytest.raises(PredictorError, match="holds the median of its timed calls, but the "
                       "device's protocol now measures the p10.*hwnas restate --device "
                       "cpu-onnxruntime"):
        device_predictor("cpu-onnxruntime", small, folder, check_drift=False)

    assert restate(path, "ops", "p10") and not restate(path, "ops", "p10")
    df, meta = read_table(path)
    assert np.array_equal(df["latency_ms"].to_numpy(), p10)
    assert meta["protocol"]["statistic"] == "p10" and meta["restated"]["from"] == "median"
    with pytest.raises(LutError, match="only as the p10.*allowed: p10"):
        restate(path, "ops", "median")
    pred, _ = device_predictor("cpu-onnxruntime", small, folder, check_drift=False)
    assert pred.kind == "lut-sum"  # no model learned a statistic: the table's is checked

    fitted = folder / "cpu-onnxruntime.predictor.json"
    table = pred.table
    archs = small.sample(8, seed=0)
    model = XGBoostPredictor(table, seed=0).fit(archs, LutSum(table).predict(archs))
    model.save(fitted)  # fitted through the API: its table says on what
    assert load_predictor(fitted).extra["statistic"] == "p10"
    assert device_predictor("cpu-onnxruntime", small, folder, check_drift=False)[0].kind \
        == "xgboost"
    model.extra["statistic"] = "median"  # fitted before the table was restated
    model.save(fitted)
    with pytest.raises(PredictorError, match="was fitted on the median of timed calls, but "
                       "the device's protocol now measures the p10: fit it again"):
        device_predictor("cpu-onnxruntime", small, folder, check_drift=False)
    model.extra.pop("statistic")
    model.save(fitted)
    assert load_predictor(fitted).extra["statistic"] == "p10"


def test_a_slow_window_is_timed_again_before_it_counts_as_drift(monkeypatch):
    """One slow timing (the host's slow window) is re-timed after a pause, each probe
    keeping its fastest; a lasting drift stays a drift."""
    import hwnas.probe as probe

    then = {"ms": {"a": 1.0, "b": 2.0}}
    answers = iter([{"ms": {"a": 1.4, "b": 2.9}}, {"ms": {"a": 1.02, "b": 3.0}},
                    {"ms": {"a": 1.5, "b": 2.02}}])
    monkeypatch.setattr(probe, "measure_probes", lambda *a, **k: next(answers))
    monkeypatch.setattr(probe, "RETRY_PAUSE_S", 0.0)
    now, (ratio, lo, hi) = probe.retime(then, "dev")
    assert now["ms"] == {"a": 1.02, "b": 2.02} and ratio == pytest.approx(1.015)
    lasting = iter([{"ms": {"a": 2.0, "b": 4.0}}] * 3 + [{"ms": {"a": 0.1, "b": 0.1}}])
    monkeypatch.setattr(probe, "measure_probes", lambda *a, **k: next(lasting))
    now, (ratio, _, _) = probe.retime(then, "dev")
    assert ratio == pytest.approx(2.0)  # timed three times, then given up: a real drift
    assert next(lasting)["ms"]["a"] == 0.1  # the fourth answer was never asked for


def test_a_measurement_in_a_slow_window_is_timed_again(monkeypatch):
    """A check whose clock ran >10% off the table's speed is timed again after a pause; the
    try nearest the table's speed is kept and every try listed. A calm first try is kept
    alone, and a lasting drift gives up after RETRIES more tries."""
    import dataclasses

    import hwnas.probe as probe
    from hwnas.backends.base import Runner

    monkeypatch.setattr(probe, "RETRY_PAUSE_S", 0.0)
    protocol = dataclasses.replace(load_device("cpu-onnxruntime").protocol, warmup=0, runs=3,
                                   rounds=2, min_time_ms=0, settle_ms=0, max_retries=0)
    speeds = iter([1.5, 1.5, 1.02, 1.02, 9.0, 9.0])  # per round: a slow try, then a calm one
    speed = {"now": 1.0}

    def timed(n):
        return np.full(n, 1e-4 * speed["now"])

    class Clock:
        def drift(self):  # read after each round; the next round runs at the next speed
            now = speed["now"]
            speed["now"] = next(speeds)
            return now

    speed["now"] = next(speeds)
    runner = Runner(run=lambda: None, time=timed)
    stats = probe.time_near_table_speed(runner, protocol, Clock())
    assert [round(d, 2) for _, d in stats["tries"]] == [1.5, 1.02]
    assert stats["drift"] == pytest.approx(1.02) and stats["latency_ms"] == pytest.approx(0.102)
    assert next(speeds) == 9.0  # no third try
    speeds = iter([1.0] * 10)
    speed["now"] = 1.0
    assert "tries" not in probe.time_near_table_speed(runner, protocol, Clock())
    speeds = iter([1.6] * 10)
    speed["now"] = 1.6
    lasting = probe.time_near_table_speed(runner, protocol, Clock())
    assert len(lasting["tries"]) == probe.RETRIES + 1 and lasting["drift"] == pytest.approx(1.6)
    speeds = iter([1.6] * 10)  # a prediction scaled for a drift of 1.6: that is on speed
    assert "tries" not in probe.time_near_table_speed(runner, protocol, Clock(), speed=1.6)


def test_a_fresh_table_keeps_the_faster_of_its_start_and_end_probes(tmp_path, small,
                                                                   monkeypatch):
    """Probes timed once can land in a slow window of the host; a profile times them at
    its start and at its end and keeps each probe's faster timing (both recorded)."""
    import hwnas.probe as probe

    start = {"ms": {"a": 2.0, "b": 1.0}, "statistic": "fastest round's median",
             "measured_at": "start"}
    end = {"ms": {"a": 1.0, "b": 1.5}, "statistic": "fastest round's median",
           "measured_at": "end"}
    answers = iter([start, end])
    monkeypatch.setattr(probe, "measure_probes", lambda *a, **k: next(answers))
    from hwnas.ops import unique_ops

    ops = unique_ops(small, [32])[:3]
    res, _ = profile("cpu-onnxruntime", small, resolutions=[32], out_dir=tmp_path,
                     progress=False, op_list=ops)
    probes = read_table(res.path)[1]["probes"]
    assert probes["ms"] == {"a": 1.0, "b": 1.0}
    assert probes["start_ms"] == start["ms"] and probes["end_ms"] == end["ms"]
    assert next(answers, None) is None  # timed exactly twice


def test_a_measurement_is_clocked_by_the_tables_nearest_calm_subnets(tmp_path, small,
                                                                      monkeypatch):
    """An export measurement is timed beside the device table's subnets nearest its
    prediction, from the table's calmer half and never the measured arch itself; the clock
    says how much longer than the table they ran, one of them in turn each round."""
    import hwnas.profile
    from hwnas.space import get_space

    profile("cpu-onnxruntime", small, resolutions=[32], out_dir=tmp_path, progress=False,
            op_list=[], subnets=10)
    table, _ = read_table(tmp_path / "cpu-onnxruntime.subnets.parquet", "subnets")
    own = table.sort_values("spread").iloc[0]["key"]  # the measured arch, a calm row
    rest = table[table["key"] != own]  # the calmer half of the rest: the arch left out first
    calm = rest[rest["spread"] <= rest["spread"].median()]
    near = float(calm["latency_ms"].median())
    rows = reference_rows("cpu-onnxruntime", tmp_path, small, near, exclude=own, n=3)
    assert len(rows) == 3 and own not in set(rows["key"])
    assert set(rows["key"]) <= set(calm["key"])
    others = calm[~calm["key"].isin(rows["key"])]
    farthest = np.abs(np.log(rows["latency_ms"] / near)).max()
    assert (np.abs(np.log(others["latency_ms"] / near)) >= farthest).all()
    # another space's table, no table, no prediction: nothing to clock by
    assert reference_rows("cpu-onnxruntime", tmp_path, get_space("small"), near) is None
    assert reference_rows("cpu-onnxruntime", tmp_path / "none", small, near) is None
    assert reference_rows("cpu-onnxruntime", tmp_path, small, 0.0) is None

    device = load_device("cpu-onnxruntime")
    from hwnas.backends import get_backend

    clock = ReferenceClock(device, rows, small, get_backend(device, tmp_path / "cache"))
    try:
        assert clock.label == "3 profiled subnets"
        assert 0.3 < clock.drift() < 3  # real sessions, one machine
        clock.stored = np.array([1.0, 2.0, 4.0])
        # visits of 30 calls of 5 ms (150 ms, >= CLOCK_MS): one reference a round, in turn
        monkeypatch.setattr(hwnas.profile, "timed_visit",
                            lambda runner, proto: np.full(30, 0.005))
        clock.turn = 0
        rounds = [clock.drift() for _ in range(4)]
        assert rounds == pytest.approx([5.0, 2.5, 1.25, 5.0])
        # visits of 30 calls of 2 ms (60 ms): two a round, the median of their ratios
        monkeypatch.setattr(hwnas.profile, "timed_visit",
                            lambda runner, proto: np.full(30, 0.002))
        clock.turn = 0
        rounds = [clock.drift() for _ in range(3)]
        assert rounds == pytest.approx([(2.0 + 1.0) / 2, (0.5 + 2.0) / 2, (1.0 + 0.5) / 2])
        # visits of 1 ms: every reference each round, none twice
        monkeypatch.setattr(hwnas.profile, "timed_visit",
                            lambda runner, proto: np.full(10, 0.0001))
        clock.turn = 0
        assert clock.drift() == pytest.approx(0.05) and clock.turn == 3
    finally:
        clock.close()


@pytest.fixture(scope="module")
def with_nets(tmp_path_factory, measured, small):
    """``measured`` with a subnet table of 8 real subnets beside its op table."""
    import shutil

    out = tmp_path_factory.mktemp("nets")
    profile("cpu-onnxruntime", small, resolutions=[32], out_dir=out, progress=False,
            op_list=[], subnets=8)
    folder = tmp_path_factory.mktemp("lut") / "lut"
    shutil.copytree(measured, folder)
    shutil.copy(out / "cpu-onnxruntime.subnets.parquet", folder)
    return folder


def test_a_drift_is_scaled_by_the_tables_subnets_where_there_are_some(tmp_path, with_nets,
                                                                      small):
    """Ops track whole nets loosely (probes 1.4x while nets ran 1.7x on one host): once the
    probes say the machine drifted, a few of the device's subnets are timed too, and their
    ratio scales the predictions. Here the probes were "measured" twice as fast and the
    subnets 8 times: the scale is the nets' (about 8), and the message says both."""
    import shutil

    folder = tmp_path / "lut"
    shutil.copytree(with_nets, folder)
    path = folder / "cpu-onnxruntime.subnets.parquet"
    table, meta = read_table(path, "subnets")
    rows, space, where = drift_nets("cpu-onnxruntime", folder)
    calm = table[table["spread"] <= table["spread"].median()].sort_values("latency_ms")
    assert len(rows) == min(5, len(calm)) and set(rows["key"]) <= set(calm["key"])
    assert rows["latency_ms"].is_monotonic_increasing and space.id == small.id
    assert where == str(path)
    assert drift_nets("cpu-onnxruntime", tmp_path / "none") is None

    meta.pop("schema_version")
    write_table(table.assign(latency_ms=table["latency_ms"] / 3), path, meta)
    for attempt in range(3):  # the probes alone decide: as fast as now, no drift
        try:
            _rescale(folder, 1.0)
            pred, how = device_predictor("cpu-onnxruntime", small, folder)
            break
        except DriftError:
            if attempt == 2:
                raise
    assert not isinstance(pred, ScaledPredictor) and "subnets of" not in how

    # the nets' table as if measured 8x as fast as this machine runs them now (the table
    # itself was timed while CI's other worker ran, once 1.8x as slow as later)
    from hwnas.probe import retime_nets

    now = retime_nets(load_device("cpu-onnxruntime"), drift_nets("cpu-onnxruntime", folder)[0],
                      space)[0]
    table, meta = read_table(path, "subnets")
    meta.pop("schema_version")
    write_table(table.assign(latency_ms=table["latency_ms"] * now / 8), path, meta)
    _rescale(folder, 0.5)
    nets = rf"and {len(rows)} of the subnets of .*subnets\.parquet \d+\.\d\dx as long as"
    with pytest.raises(DriftError, match=r"probes [1-3]\.\d\dx as long.*" + nets +
                       r".*--allow-drift to scale the predictions by \d+\.\d\d"):
        device_predictor("cpu-onnxruntime", small, folder)
    pred, how = device_predictor("cpu-onnxruntime", small, folder, allow_drift=True)
    assert isinstance(pred, ScaledPredictor) and re.search(nets, how)
    assert how.endswith(f"predictions scaled by {pred.drift.ratio:.2f}")
    assert 4.0 < pred.drift.ratio < 16.0  # the nets' 8x, not the probes' 2x
