import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hwnas.backends.base import Runner
from hwnas.devices import load_device
from hwnas.errors import LutError
from hwnas.lut import LatencyTable, read_table, write_table
from hwnas.ops import unique_ops
from hwnas.profile import (Journal, Profiler, least_busy_cores, op_items, pinned, profile,
                           sample_subnets, subnet_items, summarize, timed_visit)


def test_real_onnxruntime_profile_of_ops_and_subnets(tmp_path, small):
    ops_res, sub_res = profile("cpu-onnxruntime", small, resolutions=[32], subnets=4,
                               out_dir=tmp_path, cache_dir=tmp_path / "cache", progress=False)
    expected = {o.key for o in unique_ops(small, [32])}
    table = ops_res.table
    assert set(table["key"]) == expected and not table["key"].duplicated().any()
    assert (table["latency_ms"] > 0).all() and (table["p10_ms"] <= table["latency_ms"]).all()
    assert (table["latency_ms"] <= table["p90_ms"]).all()
    p = load_device("cpu-onnxruntime").protocol
    assert (table["count"] >= p.runs * p.rounds).all() and (table["batch"] == 1).all()
    # tiny ops get more calls, up to min_time_ms per visit
    assert table["count"].max() > p.runs * p.rounds
    lut = LatencyTable.load(tmp_path / "cpu-onnxruntime.parquet", space=small)
    subs, meta = read_table(tmp_path / "cpu-onnxruntime.subnets.parquet", "subnets")
    assert len(subs) == 4 and meta["fingerprint"]["runtime"] == "onnxruntime"
    names = set(subs["name"])
    assert small.arch_name(small.smallest()) in names  # smallest and largest always there
    archs = [small.arch(json.loads(a)) for a in subs["arch"]]
    assert np.all(lut.predict(archs) > 0)
    # the timed subnets' models are deleted, the ops' stay
    from hwnas.backends import get_backend

    backend = get_backend(load_device("cpu-onnxruntime"), tmp_path / "cache")
    subnet_files = [backend.cache_path(it.spec(backend.device)[2], ".onnx")
                    for it in subnet_items(archs, small)]
    assert sub_res.discarded_bytes > 0 and "MB of timed subnets" in sub_res.summary("subnets")
    assert not any(p.exists() for p in subnet_files)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) >= len(expected)
    assert ops_res.discarded_bytes == 0
    # a second run measures nothing and keeps every row
    again, _ = profile("cpu-onnxruntime", small, resolutions=[32], out_dir=tmp_path,
                       cache_dir=tmp_path / "cache", progress=False)
    assert again.measured == 0 and again.reused == len(expected) and len(again.table) == len(table)


def test_profile_at_another_batch_keys_its_tables_by_it(tmp_path, small):
    ops_res, sub_res = profile("cpu-onnxruntime", small, resolutions=[32], subnets=2,
                               out_dir=tmp_path, cache_dir=tmp_path / "cache", progress=False,
                               op_list=unique_ops(small, [32])[:3], batch=4)
    assert ops_res.path.name == "cpu-onnxruntime-b4.parquet"
    assert sub_res.path.name == "cpu-onnxruntime-b4.subnets.parquet"
    _, meta = read_table(ops_res.path)
    assert meta["fingerprint"]["batch"] == 4 and meta["device"]["batch"] == 4
    assert (ops_res.table["batch"] == 4).all() and (sub_res.table["batch"] == 4).all()
    assert LatencyTable.load(ops_res.path).batch == 4
    # a batch-4 op takes longer than the same op at batch 1
    one, _ = profile("cpu-onnxruntime", small, resolutions=[32], out_dir=tmp_path,
                     cache_dir=tmp_path / "cache", progress=False,
                     op_list=unique_ops(small, [32])[:3])
    both = one.table.merge(ops_res.table, on="key", suffixes=("_1", "_4"))
    assert (both["latency_ms_4"] > both["latency_ms_1"]).sum() >= 2


class _Clock:
    """A runner whose calls each take ``ms``."""

    def __init__(self, ms):
        self.ms, self.calls = ms, []

    def runner(self, **info):
        def time_(n):
            self.calls.append(n)
            return np.full(n, self.ms / 1e3)

        return Runner(run=lambda: None, time=time_, info=info)


def test_each_visit_times_at_least_min_time_ms():
    proto = dataclasses.replace(load_device("cpu-onnxruntime").protocol, warmup=2, runs=5,
                                min_time_ms=50.0)
    clock = _Clock(0.5)
    samples = timed_visit(clock.runner(), proto)
    assert clock.calls == [2, 5, 95] and samples.size == 100  # 100 calls x 0.5 ms = 50 ms
    slow = _Clock(20.0)
    assert timed_visit(slow.runner(), proto).size == 5  # 5 x 20 ms is already enough
    stats = _Clock(0.5)  # a runtime reporting one statistic per visit is not stretched
    assert timed_visit(stats.runner(per_call=False, warmup_inside=True), proto).size == 5
    assert stats.calls == [5]


def test_time_runner_with_probes_between_rounds_reports_the_table_speed():
    """The host runs 1.5x slower for three of five rounds; probes timed after each round
    slow down alike, so the latency at the table's speed is the calm one."""
    from hwnas.profile import time_runner

    proto = dataclasses.replace(load_device("cpu-onnxruntime").protocol, warmup=0, runs=4,
                                rounds=5, min_time_ms=0.0, settle_ms=0.0, max_retries=0,
                                statistic="median")
    phases = iter([1.5, 1.5, 1.5, 1.0, 1.0])
    now = {"phase": 1.0}

    def time_(n):
        now["phase"] = next(phases)
        return np.full(n, 2e-3 * now["phase"])

    class ScriptedClock:  # the probes run at the phase of the round just timed
        def drift(self):
            return now["phase"]

    stats = time_runner(Runner(run=lambda: None, time=time_), proto, ScriptedClock())
    assert stats["latency_ms"] == pytest.approx(3.0)  # the raw median: the slow phase
    assert stats["drift"] == pytest.approx(1.5)
    assert stats["at_table_speed_ms"] == pytest.approx(2.0)
    plain = time_runner(Runner(run=lambda: None, time=lambda n: np.full(n, 2e-3)), proto)
    assert "drift" not in plain and plain["latency_ms"] == pytest.approx(2.0)


def test_pinning_auto_takes_the_least_busy_usable_cores():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs Linux CPU affinity")
    allowed = sorted(os.sched_getaffinity(0))
    picked = least_busy_cores(1, allowed, interval_s=0.05)
    assert len(picked) == 1 and picked[0] in allowed
    with pinned("auto", threads=1):
        inside = sorted(os.sched_getaffinity(0))
        assert len(inside) == 1 and inside[0] in allowed
    assert sorted(os.sched_getaffinity(0)) == allowed  # restored
    with pinned("auto", threads=len(allowed)):
        assert sorted(os.sched_getaffinity(0)) == allowed


def test_sample_subnets_always_has_extremes(small):
    archs = sample_subnets(small, 10, seed=1)
    assert len(set(archs)) == 10 and archs[0] == small.smallest() and archs[1] == small.largest()
    assert {a.r for a in sample_subnets(small, 10, seed=1, resolutions=[40])} == {40}


def test_spread_sampling_keeps_each_choice_uniform_and_reaches_both_ends(small):
    """A latency-bound search ends among the smallest nets; uniform sampling almost never
    measures one (every stage at its least depth: 1 in 243), spread sampling often, while
    each choice on its own stays as likely as under uniform sampling."""
    from hwnas import encoding

    rng = np.random.default_rng(0)
    n = 6000
    X, U = encoding.sample_spread(small, n, rng), encoding.sample(small, n, rng)
    depth_genes = [s * (1 + 2 * small.max_depth) for s in range(small.n_stages)]
    for g in depth_genes + [X.shape[1] - 1]:  # depths and resolution: never zeroed
        share = np.bincount(X[:, g], minlength=3) / n
        assert np.abs(share - 1 / 3).max() < 0.03, (g, share)
    least = (X[:, depth_genes] == 0).all(1).mean()
    assert least > 0.06 and (U[:, depth_genes] == 0).all(1).mean() < 0.01
    depth = encoding.stage_depths(small, X).sum(1)
    assert np.bincount(depth)[10] > 0.8 * np.bincount(depth)[15]  # the ends as the middle


def test_subnet_samplings(small):
    # uniform is the sampler tables were drawn with before the choice: same archs, same order
    rng, res = np.random.default_rng(3), list(small.resolutions)
    old = {small.smallest(): None, small.largest(): None}
    while len(old) < 12:
        a = small.sample(1, rng)[0]
        old[small.at_resolution(a, int(rng.choice(res)))] = None
    assert sample_subnets(small, 12, seed=3, sampling="uniform") == list(old)
    for how in ("mixed", "spread"):  # extending with the same seed keeps the first ones
        more = sample_subnets(small, 24, seed=3, sampling=how)
        assert more[:12] == sample_subnets(small, 12, seed=3, sampling=how)
        assert len(set(more)) == 24 and more[:2] == list(old)[:2]
        assert {a.r for a in sample_subnets(small, 8, 1, [40], how)} == {40}
    assert sample_subnets(small, 24, seed=3, sampling="mixed") != \
        sample_subnets(small, 24, seed=3, sampling="uniform")
    with pytest.raises(LutError, match=r"unknown subnet sampling 'even'.*'mixed', 'uniform'"):
        sample_subnets(small, 4, sampling="even")


def test_a_subnet_table_records_its_sampling_and_is_extended_with_it(tmp_path, small):
    fast = load_device("cpu-onnxruntime")
    fast = dataclasses.replace(fast, protocol=dataclasses.replace(
        fast.protocol, rounds=1, runs=3, min_time_ms=0, max_retries=0))
    path = tmp_path / "cpu-onnxruntime.subnets.parquet"

    def run(n, **kw):  # extends a timed table: the host's speed may drift (test_probe)
        return profile(fast, small, [32], subnets=n, out_dir=tmp_path, op_list=[],
                       cache_dir=tmp_path / "c", progress=False, allow_drift=True, **kw)[1]

    first = run(4)
    assert read_table(path, "subnets")[1]["sampling"] == "mixed"  # a new table: mixed
    assert list(first.table["key"]) == [a.key for a in sample_subnets(small, 4, 0, [32],
                                                                     "mixed")]
    # a table from before the record was drawn uniformly: extending it keeps to that
    df, meta = read_table(path, "subnets")
    meta.pop("sampling")
    write_table(df, path, meta)
    more = run(6)
    uniform = {a.key for a in sample_subnets(small, 6, 0, [32], "uniform")}
    assert set(more.table["key"]) == set(df["key"]) | uniform
    assert more.measured == len(uniform - set(df["key"])) > 0
    assert read_table(path, "subnets")[1]["sampling"] == "uniform"
    with pytest.raises(LutError, match="allowed"):
        run(6, sampling="evenly")


def test_a_check_is_timed_in_a_new_process_and_its_errors_come_back():
    """A process that has trained or searched runs models slower than the one that timed
    the tables, so checks of a prediction run in a new one."""
    from hwnas.errors import DeviceError, HwnasError
    from hwnas.export import ExportError
    from hwnas.profile import in_fresh_process

    pid, where = in_fresh_process(os.getpid)
    assert pid != os.getpid() and where == "a new process"
    with pytest.raises(DeviceError, match="no-such-device"):  # raised there, with its class
        in_fresh_process(load_device, "no-such-device")
    # a class built from more than its message comes back as an HwnasError with its words
    with pytest.raises(HwnasError, match="stage 'measure x': it broke") as info:
        in_fresh_process(_raise_export_error)
    assert not isinstance(info.value, ExportError) and info.value.exit_code == 1
    # what cannot be sent runs here, and says so
    pid, where = in_fresh_process(lambda: os.getpid())
    assert pid == os.getpid() and where.startswith("this process (arguments not sendable")


def _raise_export_error():
    from hwnas.export import ExportError

    raise ExportError("measure x", "it broke")


def test_summarize():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert s["latency_ms"] == 3.0 and s["count"] == 5 and s["p90_ms"] > s["p10_ms"]
    low = summarize(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), "p10")
    assert low["latency_ms"] == low["p10_ms"] == pytest.approx(1.4) and low["spread"] == s["spread"]


class FakeBackend:
    """Deterministic 'timings' so the protocol itself can be checked."""

    from hwnas.backends.base import Backend

    prepare_many = Backend.prepare_many
    discard = Backend.discard  # nothing on disk to delete

    def __init__(self, noisy_first=()):
        self.visits = []
        self.noisy_first = set(noisy_first)
        self.calls = {}

    def prepare(self, module, shape, key):
        key = key.split("|")[0]

        def time_(n):
            self.calls[key] = self.calls.get(key, 0) + 1
            if n == 2:  # warm-up (the protocol default)
                return np.full(n, 1e-3)
            self.visits.append(key)
            if key in self.noisy_first and self.calls[key] <= 4:  # warm-up + timed, 2 rounds
                return np.linspace(1e-4, 1e-2, n)  # spread far above the threshold
            return np.full(n, 1e-3) + np.linspace(0, 1e-6, n)

        return Runner(run=lambda: None, time=time_)


def _profiler(tmp_path, small, backend, kind="ops", **protocol):
    protocol = {"min_time_ms": 0.0, "settle_ms": 0.0, **protocol}  # fake clocks: calls counted
    dev = load_device("cpu-onnxruntime")
    dev = dataclasses.replace(dev, protocol=dataclasses.replace(dev.protocol, **protocol))
    prof = Profiler(dev, small, tmp_path / "t.parquet", kind, tmp_path / "c", progress=False)
    prof.backend, prof.calibrate = backend, False  # fake clocks: no probes
    return prof


def test_rounds_are_interleaved_and_shuffled(tmp_path, small):
    backend = FakeBackend()
    items = op_items(unique_ops(small, [32])[:12])
    res = _profiler(tmp_path, small, backend, rounds=4, runs=5, max_retries=0).run(items)
    v = backend.visits
    assert len(v) == 48 and res.visits == 48
    rounds = [v[i * 12:(i + 1) * 12] for i in range(4)]
    assert all(sorted(r) == sorted(it.key for it in items) for r in rounds)  # every item once
    assert len({tuple(r) for r in rounds}) > 1  # in differing orders
    assert (res.table["count"] == 20).all()


def test_a_p10_protocol_records_the_p10_and_says_so(tmp_path, small):
    items = op_items(unique_ops(small, [32])[:4])
    res = _profiler(tmp_path, small, FakeBackend(), rounds=2, runs=5, max_retries=0,
                    statistic="p10").run(items)
    t = res.table
    assert (t["latency_ms"] == t["p10_ms"]).all() and (t["p90_ms"] > t["latency_ms"]).all()
    assert (t["statistic"] == "p10 of per-call times").all()


def test_noisy_rows_are_measured_again(tmp_path, small):
    items = op_items(unique_ops(small, [32])[:6])
    noisy = items[2].key
    backend = FakeBackend(noisy_first=[noisy])
    res = _profiler(tmp_path, small, backend, rounds=2, runs=5, max_retries=2,
                    max_spread=0.1, statistic="median").run(items)
    row = res.table.set_index("key").loc[noisy]
    assert row["attempts"] == 2 and row["spread"] < 0.1
    assert (res.table.set_index("key").drop(noisy)["attempts"] == 1).all()
    assert backend.visits.count(noisy) == 4 and backend.visits.count(items[0].key) == 2


class TwoSpeeds(FakeBackend):
    """A host in two speed modes: a row's first round is timed fast (1 ms), every later
    round slow (1.6 ms), so its second attempt is calm, and all of it slow."""

    def prepare(self, module, shape, key):
        key = key.split("|")[0]

        def time_(n):
            if n == 2:  # warm-up
                return np.full(n, 1e-3)
            self.visits.append(key)
            fast = self.visits.count(key) == 1
            return np.full(n, 1e-3 if fast else 1.6e-3)

        return Runner(run=lambda: None, time=time_)


@pytest.mark.parametrize("statistic, ms", [("p10", 1.0), ("median", 1.6)])
def test_a_p10_row_pools_its_attempts_a_median_row_keeps_its_calmest(tmp_path, small,
                                                                      statistic, ms):
    """Re-measured for noise, a p10 row is the p10 of every attempt's calls: the calm
    speed its first round found. A median row is its least noisy attempt's, which here
    stayed in the slow mode."""
    items = op_items(unique_ops(small, [32])[:3])
    res = _profiler(tmp_path, small, TwoSpeeds(), rounds=2, runs=5, max_retries=2,
                    max_spread=0.1, statistic=statistic).run(items)
    t = res.table
    assert np.allclose(t["latency_ms"], ms)
    pooled = statistic == "p10"  # pooled, the spread stays wide: every retry is used
    assert (t["attempts"] == (3 if pooled else 2)).all()
    assert (t["count"] == (30 if pooled else 10)).all()


def test_time_runner_pools_a_p10_measurement_alike():
    from hwnas.profile import time_runner

    proto = dataclasses.replace(load_device("cpu-onnxruntime").protocol, warmup=0, runs=5,
                                rounds=2, min_time_ms=0.0, settle_ms=0.0, max_retries=2,
                                max_spread=0.1)
    assert proto.statistic == "p10"
    visits = iter(range(100))
    stats = time_runner(Runner(run=lambda: None, time=lambda n: np.full(
        n, 1e-3 if next(visits) == 0 else 1.6e-3)), proto)
    assert stats["latency_ms"] == pytest.approx(1.0) and stats["count"] == 30


def test_subnet_rows_have_their_own_retries(tmp_path, small):
    """cpu-tflite: noisy ops are not timed again (they stay noisy), noisy subnets are."""
    from hwnas.profile import subnet_items

    items = subnet_items(small.sample(4, seed=3), small)
    noisy = items[1].key
    backend = FakeBackend(noisy_first=[items[1].ident])  # what names the runner
    res = _profiler(tmp_path, small, backend, kind="subnets", rounds=2, runs=5, max_retries=0,
                    max_retries_subnets=2, max_spread=0.1, statistic="median").run(items)
    row = res.table.set_index("key").loc[noisy]
    assert row["attempts"] == 2 and row["spread"] < 0.1
    op_rows = op_items(unique_ops(small, [32])[:2])
    ops = _profiler(tmp_path / "o", small, FakeBackend(noisy_first=[op_rows[0].key]),
                    rounds=2, runs=5, max_retries=0, max_retries_subnets=2,
                    max_spread=0.1).run(op_rows)
    row = ops.table.set_index("key").loc[op_rows[0].key]
    assert row["attempts"] == 1 and row["spread"] > 0.1


def test_a_journal_of_another_protocol_is_not_resumed(tmp_path, small):
    """Samples timed under one protocol (30 calls a visit, every model loaded) are not
    summed with those of another (5 calls, reloaded): the journal is refused, and kept."""
    items = op_items(unique_ops(small, [32])[:3])
    prof = _profiler(tmp_path, small, FakeBackend(), rounds=2, runs=5, max_retries=0)
    journal = Journal(tmp_path / "t.journal.parquet", prof.meta)
    journal.add(items[0].key, 0, 0, np.full(5, 1.0))
    journal.flush()
    other = _profiler(tmp_path, small, FakeBackend(), rounds=2, runs=30, max_retries=0)
    with pytest.raises(LutError, match=r"another protocol \(runs: 5 vs 30\).*delete it"):
        other.run(items)
    assert (tmp_path / "t.journal.parquet").exists()
    # what only decides re-timing may change; the same protocol resumes
    res = _profiler(tmp_path, small, FakeBackend(), rounds=2, runs=5, max_retries=1,
                    max_spread=0.5).run(items)
    assert len(res.table) == 3 and res.visits == 5  # the journal's visit was not redone


def test_resume_refuses_another_fingerprint(tmp_path, small):
    items = op_items(unique_ops(small, [32])[:3])
    prof = _profiler(tmp_path, small, FakeBackend(), rounds=1, runs=2, max_retries=0)
    prof.run(items)
    df, meta = read_table(tmp_path / "t.parquet")
    meta["fingerprint"] = {**meta["fingerprint"], "threads": 8, "cpu": "Other CPU"}
    write_table(df, tmp_path / "t.parquet", meta)
    with pytest.raises(LutError, match="another fingerprint.*cpu: 'Other CPU'.*threads: 8 vs 1"):
        _profiler(tmp_path, small, FakeBackend(), rounds=1, runs=2).run(op_items(
            unique_ops(small, [32])))


def test_resume_refuses_another_statistic(tmp_path, small):
    items = op_items(unique_ops(small, [32])[:3])
    _profiler(tmp_path, small, FakeBackend(), rounds=1, runs=2, max_retries=0,
              statistic="median").run(items)
    with pytest.raises(LutError, match="hold the median of their timed calls.*now the p10"):
        _profiler(tmp_path, small, FakeBackend(), rounds=1, runs=2, statistic="p10").run(
            op_items(unique_ops(small, [32])))


def _journal_visits(path: Path) -> int:
    if not path.exists():
        return 0
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).num_rows
    except Exception:
        return 0


@pytest.mark.slow
def test_kill_9_mid_profile_loses_and_duplicates_nothing(tmp_path, small):
    """Kill a real profiling process twice at different moments; the resumed run measures
    only what the journal lacks and the final table has every op exactly once. (Resumes
    pass --allow-drift: the host's speed swings by a third within minutes, and refusing a
    drift is tested in test_probe.)"""
    dev_file = tmp_path / "kill-ort.yaml"
    dev_file.write_text(yaml.safe_dump({
        "name": "kill-ort", "backend": "onnxruntime", "hardware": "cpu", "threads": 1,
        "protocol": {"warmup": 1, "runs": 3000, "rounds": 3, "max_retries": 0}}))
    out = tmp_path / "lut"
    journal = out / "kill-ort.journal.parquet"
    cmd = [sys.executable, "-m", "hwnas", "profile", "--device", str(dev_file), "--space",
           "small", "--resolutions", "32", "--out", str(out), "--cache", str(tmp_path / "c"),
           "--allow-drift"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    seen = []
    for extra in (1, 30):
        wait_visits = (seen[-1] if seen else 0) + extra
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300
        while _journal_visits(journal) < wait_visits and time.time() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "profiling finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_journal_visits(journal))
    assert seen[1] > seen[0] > 0  # the second run continued from the first's journal
    assert not (out / "kill-ort.parquet").exists()  # no row is final before all rounds
    from hwnas.profile import profile as run_profile

    n_ops = len(unique_ops(small, [32]))
    ops_res, _ = run_profile(str(dev_file), small, [32], out_dir=out,
                             cache_dir=tmp_path / "c", progress=False, allow_drift=True)
    assert ops_res.visits == n_ops * 3 - seen[1]  # nothing measured twice, nothing lost
    table = ops_res.table
    assert len(table) == n_ops and not table["key"].duplicated().any()
    assert (table["count"] == 3 * 3000).all()
    assert not journal.exists()  # cleaned up once every row is final


@pytest.mark.parametrize("device", ["cpu-torch", "cpu-tflite"])
def test_real_torch_and_litert_profiles(tmp_path, small, device):
    dev = load_device(device)
    dev = dataclasses.replace(dev, protocol=dataclasses.replace(dev.protocol, rounds=2, runs=5))
    chosen = [o for o in unique_ops(small, [32]) if o.kind != "mbconv"][:2] + \
        [next(o for o in unique_ops(small, [32]) if o.se_mid)]
    res, _ = profile(dev, small, [32], out_dir=tmp_path, cache_dir=tmp_path / "c",
                     op_list=chosen, progress=False)
    assert list(res.table["key"]) == [o.key for o in chosen]
    assert (res.table["latency_ms"] > 0).all() and (res.table["count"] >= 10).all()
    _, meta = read_table(tmp_path / f"{device}.parquet")
    assert meta["fingerprint"]["runtime"] == ("torch" if device == "cpu-torch" else "litert")
