"""The strategies benchmark's ground truth and scores (its numbers come from runs, these
are the rules that turn runs into numbers)."""

import numpy as np
import pytest

from benchmarks.bench_strategies import ground_truth_subnets, regret, score, top5_overlap
from benchmarks.bench_train import spanning_subnets


def test_the_ground_truth_grows_the_train_benchmarks_subnets(small):
    from hwnas.ops import count_batch

    picks = ground_truth_subnets(small, 30, 0)
    assert picks[:10] == spanning_subnets(small, 10, 1)  # its rows are reused as they are
    assert len({a.key for a in picks}) == 30
    macs = count_batch(picks, small)[:, 0]
    ends = count_batch([small.smallest(), small.largest()], small)[:, 0]
    assert macs.min() == ends[0] and macs.max() == ends[1]
    # spread over the range: no third of the log-MAC range is left empty
    edges = np.geomspace(ends[0], ends[1], 4)
    assert all(((macs >= lo) & (macs <= hi)).sum() >= 5 for lo, hi in zip(edges, edges[1:]))


def test_regret_and_top5_overlap():
    truth = np.array([0.90, 0.92, 0.95, 0.91, 0.97, 0.93])
    macs = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    assert regret(truth, truth, macs, 4) == 0.0
    wrong = np.array([0, 0, 0, 1, 0, 0], dtype=float)  # rates the 0.91 one best
    assert regret(wrong, truth, macs, 4) == pytest.approx(4.0)  # 95 - 91 points
    assert top5_overlap(truth, truth) == 1.0
    assert top5_overlap(-truth, truth) == 0.8  # of six, the worst five share four with the best


def test_scores_with_intervals_and_the_paired_difference():
    rng = np.random.default_rng(0)
    truth_by_seed = rng.normal(0.9, 0.02, (30, 3)) + np.linspace(0, 0.1, 30)[:, None]
    truth = truth_by_seed.mean(1)
    macs = np.geomspace(1e6, 1e7, 30)
    ratings = {"sandwich": np.stack([truth + rng.normal(0, 0.03, 30) for _ in range(3)]),
               "perfect": np.stack([truth] * 3),
               "random": rng.normal(0, 1, (3, 30))}
    rows, noise = score(ratings, truth, truth_by_seed, macs, seed=0)
    by = {r["method"]: r for r in rows}
    assert by["perfect"]["tau"] == 1.0
    assert by["perfect"]["tau 95% interval"] == pytest.approx([1.0, 1.0])
    assert by["perfect"]["regret @ MACs p50 (points)"] == 0.0
    assert by["perfect"]["regret @ MACs p50 (points) 95% interval"] == [0.0, 0.0]
    assert by["perfect"]["top-5 overlap 95% interval"] == [1.0, 1.0]
    assert by["random"]["top-5 overlap"] < 1
    lo, hi = by["sandwich"]["tau 95% interval"]
    assert lo < by["sandwich"]["tau"] < hi
    assert by["perfect"]["tau - sandwich 95% interval"][0] > 0  # beats it, beyond the noise
    assert by["random"]["tau - sandwich 95% interval"][1] < 0
    assert "tau - sandwich" not in by["sandwich"]
    assert noise["subnets"] == 30 and 0 < noise["standalone_seed_vs_seed_tau"] < 1
