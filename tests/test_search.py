import json
import re
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_table

from hwnas.ops import count_batch
from hwnas.predictor import LutSum
from hwnas.encoding import canonical
from hwnas.search import (ALGORITHMS, SearchConfig, SearchError, hypervolume, non_dominated,
                          parse_objectives, search, weighted_crowding)

FP = {"device": "synthetic", "cpu": "x", "threads": 1, "runtime": "onnxruntime"}
DEV = "cpu-onnxruntime"


@pytest.fixture(scope="module")
def lut_dir(tmp_path_factory, small):
    """A LUT and a saved LUT-sum predictor for the small space, as 'hwnas predictor fit'
    would leave them in lut/."""
    d = tmp_path_factory.mktemp("lut")
    table = synthetic_table(d / f"{DEV}.parquet", small, FP)
    LutSum(table).save(d / f"{DEV}.predictor.json")
    return d


@pytest.fixture(scope="module")
def predictor(lut_dir):
    from hwnas.predictor import load_predictor

    return load_predictor(lut_dir / f"{DEV}.predictor.json")


def toy_accuracy(space):
    """Accuracy rising with log MACs plus an arch-dependent wiggle (so the best arch under
    a budget is not simply the one with the most MACs)."""
    def acc(archs):
        c = count_batch(archs, space)[:, 0].astype(float)
        wiggle = np.array([zlib.crc32(a.key.encode()) % 1000 / 1000 for a in archs])
        return 0.5 + 0.3 * np.log(c) / np.log(4e7) + 0.03 * wiggle
    return acc


def budgets(predictor, small):
    lo = float(predictor.predict([small.smallest()])[0])
    hi = float(predictor.predict([small.largest()])[0])
    return (round(lo + 0.25 * (hi - lo), 3), round(lo + 0.5 * (hi - lo), 3))


def run(small, predictor, tmp_path, algorithm, evaluations=40, **kw):
    kw.setdefault("verify", "off")  # synthetic tables: nothing to measure them against
    cfg = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                       budgets_ms=budgets(predictor, small), algorithm=algorithm,
                       evaluations=evaluations, pop_size=10, nat_initial=12,
                       nat_per_iteration=6, nat_generations=4, **kw)
    return search(cfg, tmp_path / algorithm, accuracy=toy_accuracy(small),
                  predictors={DEV: predictor}, progress=False)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_returns_valid_archs_within_budget(algorithm, small, predictor,
                                                          tmp_path):
    res = run(small, predictor, tmp_path, algorithm)
    assert res.evaluations == 40
    b_lo, b_hi = budgets(predictor, small)
    assert set(res.best) == {b_lo, b_hi}
    for b, row in res.best.items():
        arch = small.arch(json.loads(row["arch"]))  # valid, or this raises
        assert float(predictor.predict([arch])[0]) <= b + 1e-9
        on_disk = small.load_arch(tmp_path / algorithm / f"best-{b:g}ms.json")
        assert on_disk == arch
    # the best under the looser budget is at least as accurate
    assert res.best[b_hi]["acc"] >= res.best[b_lo]["acc"]
    # every evaluated arch decodes and the feasible ones meet the largest budget
    df = pd.read_parquet(tmp_path / algorithm / "archive.parquet")
    assert len(df) >= 40
    lat = predictor.predict([small.arch(json.loads(a)) for a in df["arch"]])
    assert np.all((lat <= b_hi + 1e-9) == df["feasible"].to_numpy())
    assert df.loc[df["feasible"], "acc"].notna().all()
    # the front is non-dominated and its points are all in the archive
    F = np.column_stack([-res.front["acc"], res.front[f"latency:{DEV}"]])
    for i in range(len(F)):
        dominated = np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1)
        assert not dominated.any()
    assert set(res.front["key"]) <= set(df["key"])
    for name in ("front.png", "hypervolume.png", "pareto.csv", "pareto.json", "config.json",
                 "best.json", "summary.json"):
        assert (tmp_path / algorithm / name).stat().st_size > 0


def test_same_seed_same_search_and_resume_continues(small, predictor, tmp_path):
    full = run(small, predictor, tmp_path / "full", "nsga2", evaluations=50)

    class Interrupt(Exception):
        pass

    calls = []
    acc = toy_accuracy(small)

    def dying(archs):
        calls.append(len(archs))
        if sum(calls) > 25:
            raise Interrupt
        return acc(archs)

    cfg = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                       budgets_ms=budgets(predictor, small), algorithm="nsga2",
                       evaluations=50, pop_size=10, verify="off")
    out = tmp_path / "cut"
    import hwnas.search.archive as A

    flush = A.FLUSH_SECONDS
    A.FLUSH_SECONDS = 0.0  # write the archive after every batch, as a slow search would
    try:
        with pytest.raises(Interrupt):
            search(cfg, out, accuracy=dying, predictors={DEV: predictor}, progress=False)
    finally:
        A.FLUSH_SECONDS = flush
    kept = pd.read_parquet(out / "archive.parquet")
    assert 0 < kept["acc"].notna().sum() <= 25
    with pytest.raises(SearchError, match="resume"):
        search(cfg, out, accuracy=acc, predictors={DEV: predictor}, progress=False)
    counted = []

    def counting(archs):
        counted.append(len(archs))
        return acc(archs)

    res = search(cfg, out, resume=True, accuracy=counting, predictors={DEV: predictor},
                 progress=False)
    # measured accuracies are reused, not asked again; the end state is the uninterrupted one
    assert sum(counted) == 50 - kept["acc"].notna().sum()
    assert list(res.archive["key"]) == list(full.archive["key"])
    assert res.best.keys() == full.best.keys()
    assert all(res.best[b]["key"] == full.best[b]["key"] for b in res.best)


def test_a_resumed_search_replays_its_recorded_latencies(small, predictor, tmp_path):
    """Resumed after the machine drifted (--allow-drift scales every prediction by 0.7), a
    finished search replays its trajectory from the archive: no arch is evaluated anew and
    the winners stay, although the budgets now cut the scaled predictions elsewhere."""
    from hwnas.probe import Drift, ScaledPredictor

    first = run(small, predictor, tmp_path, "nsga2", evaluations=80)
    faster = ScaledPredictor(predictor, Drift(0.7, "scaled for the test", scaled=True))
    asked = []
    acc = toy_accuracy(small)
    again = search(None, tmp_path / "nsga2", resume=True, predictors={DEV: faster},
                   accuracy=lambda archs: asked.append(len(archs)) or acc(archs),
                   progress=False)
    assert not asked and list(again.archive["key"]) == list(first.archive["key"])
    assert {b: r["key"] for b, r in again.best.items()} == \
        {b: r["key"] for b, r in first.best.items()}


def test_bad_input_is_refused_before_work(small, predictor, lut_dir, tmp_path):
    with pytest.raises(SearchError, match="unknown objective 'speed'"):
        parse_objectives("acc,speed")
    with pytest.raises(SearchError, match="needs a device"):
        parse_objectives("acc,latency")
    with pytest.raises(SearchError, match="given twice"):
        parse_objectives("acc,acc")
    with pytest.raises(SearchError, match="algorithm='ga'"):
        SearchConfig(algorithm="ga")
    with pytest.raises(SearchError, match="budget needs a latency objective"):
        SearchConfig(objectives=("acc", "params"), budgets_ms=(5,))
    with pytest.raises(SearchError, match="nat searches with an accuracy surrogate"):
        SearchConfig(objectives=("params", "macs"), algorithm="nat")
    with pytest.raises(SearchError, match="weights for"):
        SearchConfig(weights={"speed": 2.0})
    called = []

    def acc(archs):
        called.append(1)
        return np.zeros(len(archs))

    low = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"), budgets_ms=(1e-4,))
    with pytest.raises(SearchError, match="below the predicted latency of the smallest"):
        search(low, tmp_path / "a", accuracy=acc, predictors={DEV: predictor}, progress=False)
    none = SearchConfig(space="small", objectives=("acc", "latency:cpu-torch"),
                        lut_dir=str(lut_dir))
    with pytest.raises(SearchError, match="no latency predictor for device 'cpu-torch'"):
        search(none, tmp_path / "b", accuracy=acc, progress=False)
    unknown = SearchConfig(space="small", objectives=("acc", "latency:my-phone"),
                           lut_dir=str(lut_dir))
    with pytest.raises(SearchError, match="no device named 'my-phone'"):
        search(unknown, tmp_path / "c", accuracy=acc, progress=False)
    other = SearchConfig(space="default", objectives=("acc", f"latency:{DEV}"),
                         lut_dir=str(lut_dir))
    with pytest.raises(SearchError, match="space"):
        search(other, tmp_path / "d", accuracy=acc, progress=False)
    no_acc = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                          lut_dir=str(lut_dir))
    with pytest.raises(SearchError, match="needs an accuracy source"):
        search(no_acc, tmp_path / "e", progress=False)
    assert not called
    assert not (tmp_path / "a").exists()


def test_objectives_without_accuracy_and_three_objectives(small, predictor, tmp_path):
    cfg = SearchConfig(space="small", objectives=(f"latency:{DEV}", "params", "macs"),
                       algorithm="nsga3", evaluations=60, pop_size=12)
    res = search(cfg, tmp_path / "x", predictors={DEV: predictor}, progress=False)
    F = res.front[[f"latency:{DEV}", "params", "macs"]].to_numpy()
    assert len(non_dominated(F)) == len(F)
    counts = count_batch([small.arch(json.loads(a)) for a in res.front["arch"]], small)
    assert np.array_equal(counts[:, 0], res.front["macs"].to_numpy().astype(np.int64))
    # with no budget, the best is the first objective's minimum over the archive
    best = res.best[0.0]
    assert best[f"latency:{DEV}"] == res.archive[f"latency:{DEV}"].min()


def test_canonical_vectors_are_the_encodings_of_their_archs(small, rng):
    lo, hi = small.bounds
    X = rng.integers(lo, hi + 1, size=(200, small.n_var))
    C = canonical(small, X, np.arange(len(small.resolutions)))
    for x, c in zip(X, C):
        assert small.decode(x) == small.decode(c)
        assert np.array_equal(small.encode(small.decode(x)), c)
    only_40 = canonical(small, X, np.array([small.resolutions.index(40)]))
    assert {small.decode(c).r for c in only_40} == {40}


def test_hypervolume_and_weighted_crowding_on_constructed_points():
    lo, hi = np.zeros(2), np.ones(2)
    # one point at the ideal dominates the whole box up to the reference point 1.1
    assert hypervolume(np.array([[0.0, 0.0]]), lo, hi) == pytest.approx(1.0)
    two = hypervolume(np.array([[0.0, 1.0], [1.0, 0.0]]), lo, hi)
    assert two == pytest.approx((1.1 * 0.1 * 2 - 0.1 * 0.1) / 1.21)
    assert hypervolume(np.zeros((0, 2)), lo, hi) == 0.0
    F = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.5], [4.0, 0.0]])
    even = weighted_crowding([1.0, 1.0])(F)
    assert np.isinf(even[[0, 3]]).all()
    latency_heavy = weighted_crowding([0.0, 3.0])(F)
    # interior points: the weight multiplies the normalised gap of its objective
    assert latency_heavy[1] == pytest.approx(3.0 * (4.0 - 1.5) / 4.0)
    assert latency_heavy[2] == pytest.approx(3.0 * (2.0 - 0.0) / 4.0)


def test_cli_search_with_a_trained_supernet(small, lut_dir, tmp_path):
    """The real accuracy path: a (briefly trained) supernet, BN recalibrated per subnet."""
    from hwnas.data import digits
    from hwnas.train import TrainConfig, train

    train_set, _ = digits(max(small.resolutions))
    train(small, train_set, TrainConfig(epochs=1, batch_size=32), tmp_path / "sn",
          progress=False, max_steps=3)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas", "search", "--device", DEV, "--space", "small",
           "--lut", str(lut_dir), "--checkpoint", str(tmp_path / "sn" / "last.pt"),
           "--budget-ms", "%g" % budgets_of(lut_dir, small)[1], "--evaluations", "8",
           "--pop-size", "4", "--verify", "off", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    df = pd.read_parquet(out / "archive.parquet")
    accs = df.loc[df["feasible"], "acc"]
    assert len(accs) >= 8 and accs.between(0, 1).all()
    assert small.load_arch(out / "best.json")
    bad = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "r2"), "--algo", "tabu"],
                         capture_output=True, text=True, timeout=120)
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", bad.stderr).split())  # rich boxes wrap lines
    assert bad.returncode == 2 and "'tabu' is not one of 'random', 'nsga2'" in said
    assert "Traceback" not in bad.stderr


def budgets_of(lut_dir, small):
    from hwnas.predictor import load_predictor

    return budgets(load_predictor(lut_dir / f"{DEV}.predictor.json"), small)


def test_accuracy_surrogate_ranks_and_survives_constant_genes(default):
    """A budget often fixes genes (here the resolution): the surrogate must still fit."""
    from scipy.stats import kendalltau

    from hwnas.search import AccuracySurrogate

    archs = [default.arch(r=160, d=a.d, k=a.k, e=a.e) for a in default.sample(120, seed=3)]
    macs = count_batch(archs, default)[:, 0].astype(float)
    acc = 0.7 + 0.1 * np.log(macs) / np.log(macs.max())
    s = AccuracySurrogate(default, "rbf", seed=0).fit(archs[:80], acc[:80])
    pred, std = s.predict_with_uncertainty(archs[80:])
    assert kendalltau(pred, acc[80:]).statistic > 0.5
    assert np.all(std >= 0) and std.mean() > 0
    auto = AccuracySurrogate(default, "auto", seed=0).fit(archs[:80], acc[:80])
    assert auto.chosen in ("rbf", "xgboost") and set(auto.cv_tau) == {"rbf", "xgboost"}
    assert auto.cv_tau[auto.chosen] == max(auto.cv_tau.values())


def test_random_search_finds_archs_under_a_tight_budget(small, predictor, tmp_path):
    """A budget few archs meet: random search keeps drawing (no accuracy is spent on a
    rejected draw) rather than giving up with nothing, as it once did."""
    budget = float(predictor.predict([small.smallest()])[0]) * 1.001  # the lowest allowed
    share = float(np.mean(predictor.predict(small.sample(20000, seed=9)) <= budget))
    assert 0 < share < 0.02  # under 1 in 50 uniform draws meets it (a loaded host's
    # table puts the smallest arch nearer its neighbours: 1.2% seen once)
    # 5 archs in rounds of 4 draws: 30 fruitless rounds (the old stopping rule) are likely
    cfg = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                       budgets_ms=(budget,), algorithm="random", evaluations=5, pop_size=4,
                       verify="off")
    res = search(cfg, tmp_path / "tight", accuracy=toy_accuracy(small),
                 predictors={DEV: predictor}, progress=False, plots=False)
    assert res.evaluations == 5 and res.best[budget][f"latency:{DEV}"] <= budget


def test_a_search_that_found_nothing_finishes_empty(small, predictor, tmp_path):
    from hwnas.search import archive_objectives, best_per_budget
    from hwnas.search.archive import ARCHIVE_COLUMNS

    cfg = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                       budgets_ms=(1.0,), algorithm="random", evaluations=5)
    empty = pd.DataFrame(columns=list(ARCHIVE_COLUMNS))
    assert best_per_budget(empty, cfg) == {}
    assert archive_objectives(empty, cfg.parsed_objectives).shape == (0, 2)


def test_a_verified_best_sits_the_margin_under_its_budget(small, predictor):
    """A second measurement of one arch differs by a few percent: with verification, the
    best per budget is the best measured at least ``verify_margin`` under it."""
    from hwnas.search import SearchError, best_per_budget

    cfg = SearchConfig(space="small", objectives=("acc", f"latency:{DEV}"),
                       budgets_ms=(1.0,), verify_margin=0.03)
    rows = pd.DataFrame({"key": list("abc"), "arch": ["{}"] * 3, "feasible": True,
                         "acc": [0.9, 0.8, 0.7], f"latency:{DEV}": [0.99, 0.97, 0.5]})
    assert best_per_budget(rows, cfg)[1.0]["key"] == "a"  # no margin: at the budget
    assert best_per_budget(rows, cfg, cfg.verify_margin)[1.0]["key"] == "b"  # 0.97*1.03 < 1
    assert best_per_budget(rows, cfg, 0.5)[1.0]["key"] == "c"
    with pytest.raises(SearchError, match=r"verify_margin.*a fraction in \[0, 1\)"):
        SearchConfig(verify_margin=1.5)


def test_resume_from_the_command_line_needs_only_the_folder(lut_dir, tmp_path, capsys):
    """``hwnas search --resume DIR`` alone continues DIR from its own config.json (the
    README's command); a second --out is refused rather than silently ignored."""
    from hwnas.cli import main

    def cli(*argv):
        try:
            main(list(argv))
            return 0
        except SystemExit as exc:
            return exc.code

    run = tmp_path / "run"
    assert cli("search", "--space", "small", "--objectives", f"latency:{DEV},params",
               "--evaluations", "30", "--pop-size", "10", "--lut", str(lut_dir),
               "--out", str(run)) == 0
    first = pd.read_parquet(run / "archive.parquet")
    capsys.readouterr()
    assert cli("search", "--resume", str(run)) == 0  # no --device, no --space needed
    out = capsys.readouterr().out
    assert "best per budget" in out and "archive:" in out
    again = pd.read_parquet(run / "archive.parquet")
    assert list(again["key"])[:len(first)] == list(first["key"])  # replayed, not redone
    assert cli("search", "--resume", str(run), "--out", str(tmp_path / "x")) == 2
    assert "drop --out" in capsys.readouterr().err
