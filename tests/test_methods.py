"""Supernet training methods (hwnas.methods): resume for each, what each step trains, the
two ratings (DNA block losses, BN-γ indicator) and their bad input."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwnas.data import Dataset, digits
from hwnas.methods import METHODS
from hwnas.train import TrainConfig, TrainError, load_checkpoint, load_supernet, train


@pytest.fixture(scope="module")
def data():
    tr, va = digits(32)
    return (Dataset(tr.images[:128], tr.labels[:128], 10, "t"),
            Dataset(va.images[:64], va.labels[:64], 10, "v"))


@pytest.fixture(scope="module")
def teacher(small, data, tmp_path_factory):
    """A briefly trained sandwich supernet, to teach DNA."""
    out = tmp_path_factory.mktemp("teacher")
    return train(small, data[0], TrainConfig(epochs=1, n_random=0), out,
                 progress=False).checkpoint


def config(method, teacher, **kw):
    return TrainConfig(epochs=3, batch_size=64, n_random=1, method=method,
                       teacher=str(teacher) if method == "dna" else None, **kw)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_to_the_uninterrupted_run(method, small, data, teacher,
                                                       tmp_path):
    cfg = config(method, teacher)
    full = train(small, data[0], cfg, tmp_path / "full", progress=False)
    cut = train(small, data[0], cfg, tmp_path / "cut", progress=False, max_steps=2)
    assert cut.epochs_done == 1
    resumed = train(small, data[0], cfg, tmp_path / "cut", progress=False)
    a, b = (load_checkpoint(r.checkpoint, small) for r in (full, resumed))
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "rating_model"):
        assert (key in a) == (key in b)
        if key in a:
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for name, part in a.get("method_state", {}).items():
        assert all(torch.equal(part[k], b["method_state"][name][k]) for k in part)
    # it trained: the weights moved away from the initial ones
    torch.manual_seed(0)
    from hwnas.supernet import Supernet

    fresh = Supernet(small).state_dict()
    assert any(not torch.equal(fresh[k], a["model"][k]) for k in fresh
               if k.startswith("stages."))
    with pytest.raises(TrainError, match="other settings"):
        train(small, data[0], dataclasses.replace(cfg, seed=5), tmp_path / "cut",
              progress=False)


def test_unknown_method_and_misplaced_teacher_are_refused(small, data, teacher, tmp_path):
    with pytest.raises(TrainError, match="method='greedy'.*sandwich or fairnas or attentive "
                                         "or pinas or dna"):
        TrainConfig(method="greedy")
    with pytest.raises(TrainError, match="teacher=.*only with method dna"):
        TrainConfig(teacher="x.pt")
    with pytest.raises(TrainError, match="pareto='middle'.*best or worst"):
        TrainConfig(method="attentive", pareto="middle")
    with pytest.raises(TrainError, match="needs a teacher"):
        train(small, data[0], TrainConfig(method="dna"), tmp_path / "a", progress=False)
    with pytest.raises(TrainError, match="does not exist"):
        train(small, data[0], TrainConfig(method="dna", teacher=str(tmp_path / "no.pt")),
              tmp_path / "b", progress=False)
    # a teacher of another space: named, with the space it should be
    from hwnas.space import SearchSpace

    wider = SearchSpace.from_dict({**small.to_dict(), "name": "wider", "width_mult": 1.5})
    with pytest.raises(TrainError, match="space 'small'.*not 'wider'"):
        train(wider, data[0], TrainConfig(method="dna", teacher=str(teacher)),
              tmp_path / "c", progress=False)


def test_the_command_names_a_bad_method_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hwnas", "train", "--space", "small",
                        "--method", "greedy", "--epochs", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "greedy" in r.stderr and "sandwich or fairnas" in r.stderr


def test_fairnas_trains_every_choice_of_every_gene_once_per_step(small):
    method = METHODS["fairnas"](small, TrainConfig(method="fairnas"), None)
    hi = np.asarray(small.bounds[1])
    for seed in range(5):
        genes = method.genes(np.random.default_rng(seed))
        assert len(genes) == hi.max() + 1
        for g, top in enumerate(hi):  # each gene: every choice, once
            assert sorted(genes[:, g]) == list(range(top + 1))
        archs = method.archs(np.random.default_rng(seed))
        assert archs == [small.decode(g) for g in genes]
        # the first block of every stage always runs: its kernels and expands, once each
        firsts = [[(k, e) for s, b, k, e in small.active_blocks(a) if b == 0] for a in archs]
        for s in range(len(small.stages)):
            assert sorted(f[s][0] for f in firsts) == sorted(small.kernels)
            assert sorted(f[s][1] for f in firsts) == sorted(small.expands)


def test_attentive_trains_the_best_or_worst_candidate_of_one_mac_level(small, data):
    from hwnas.ops import count_batch
    from hwnas.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(small)
    x, y = data[0].images[:32], data[0].labels[:32]
    picks = {}
    for pareto in ("best", "worst"):
        method = METHODS["attentive"](small, TrainConfig(method="attentive", pareto=pareto,
                                                         candidates=4), net)
        picks[pareto] = method.pick(net, x, y, None, np.random.default_rng(3))
    # the same draw of candidates, from one MAC bin; opposite ends of their losses
    assert picks["best"] != picks["worst"]
    bins = [i for i, b in enumerate(method.bins) for a in picks.values() if a in b]
    assert len(set(bins)) == 1
    rng = np.random.default_rng(3)
    pool = method.bins[int(rng.integers(len(method.bins)))]
    cands = [pool[int(i)] for i in rng.choice(len(pool), 4, replace=False)]
    from hwnas.data import model_input
    import torch.nn.functional as F

    with torch.no_grad():
        losses = []
        for a in cands:
            net.set_active(a)
            losses.append(float(F.cross_entropy(net(model_input(x, a.r)), y)))
    assert picks["best"] == cands[int(np.argmin(losses))]
    assert picks["worst"] == cands[int(np.argmax(losses))]
    macs = count_batch(list(picks.values()), small)[:, 0]
    assert macs.max() / macs.min() < count_batch([small.largest()], small)[0, 0] / \
        count_batch([small.smallest()], small)[0, 0]


def test_pinas_rates_with_its_mean_teacher(small, data, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, method="pinas", ema_decay=0.5)
    res = train(small, data[0], cfg, tmp_path, progress=False, max_steps=1)
    state = load_checkpoint(res.checkpoint, small)
    teacher = state["method_state"]["teacher"]
    assert all(torch.equal(teacher[k], state["rating_model"][k]) for k in teacher)
    # one step of decay 0.5 from a copy of the initial weights: halfway to the student's
    torch.manual_seed(0)
    from hwnas.supernet import Supernet

    init = Supernet(small).state_dict()
    k = "stages.0.0.expand_conv.weight"
    assert torch.allclose(teacher[k], 0.5 * init[k] + 0.5 * state["model"][k], atol=1e-6)
    loaded = load_supernet(res.checkpoint, small).state_dict()
    assert torch.equal(loaded[k], teacher[k]) and not torch.equal(loaded[k], state["model"][k])


def test_dna_learns_the_teachers_blocks_and_rates_subnets(small, data, teacher, tmp_path):
    from hwnas.methods.dna import DnaRating

    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.1, method="dna", teacher=str(teacher))
    res = train(small, data[0], cfg, tmp_path / "dna", progress=False)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]
    student, taught = load_supernet(res.checkpoint, small), load_supernet(teacher, small)
    for name in ("stem", "classifier"):  # a complete supernet: the teacher's stem and head
        a, b = getattr(student, name).state_dict(), getattr(taught, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    rate = DnaRating(res.checkpoint, small, data[1], images=64)
    archs = [small.largest(), small.smallest()] + small.sample(3, seed=2)
    scores = rate(archs)
    assert scores.shape == (5,) and np.all(scores < 0) and len(set(scores.round(6))) == 5
    assert np.array_equal(scores, rate(archs))  # deterministic
    with pytest.raises(TrainError, match="not trained with --method dna.*'sandwich'"):
        DnaRating(teacher, small, data[1])


def test_bn_indicator_sees_expand_and_depth_not_kernels(small, teacher):
    from hwnas.methods.bnnas import BnIndicator

    rate = BnIndicator(teacher, small)
    big = small.largest()
    fewer = small.arch(r=big.r, d=tuple(d - 1 for d in big.d), k=big.k, e=big.e)
    narrow = small.arch(r=big.r, d=big.d, k=big.k, e=tuple(min(small.expands) for _ in big.e))
    other_k = small.arch(r=min(small.resolutions), d=big.d,
                         k=tuple(min(small.kernels) for _ in big.k), e=big.e)
    s = rate([big, fewer, narrow, other_k])
    assert s[1] < s[0] and s[2] != s[0]
    assert s[3] == s[0]  # kernels share their BNs, resolution is unseen: the documented tie
    with torch.no_grad():  # larger γ, larger rating
        rate.net.stages[0][0].dw_bn.weight.mul_(3)
    assert rate([big])[0] > s[0]


def test_search_with_the_bn_and_dna_ratings(small, data, teacher, tmp_path):
    from helpers import synthetic_table

    from hwnas.predictor import LutSum
    from hwnas.search import SearchConfig, SearchError, search

    dev = "cpu-onnxruntime"
    table = synthetic_table(tmp_path / f"{dev}.parquet", small,
                            {"device": "synthetic", "cpu": "x", "threads": 1,
                             "runtime": "onnxruntime"})
    predictor = LutSum(table)
    dna = train(small, data[0], TrainConfig(epochs=1, method="dna", teacher=str(teacher)),
                tmp_path / "dna", progress=False).checkpoint
    for spec, label in ((f"bn:{teacher}", "BN-γ"), (f"dna:{dna}", "DNA")):
        cfg = SearchConfig(space="small", objectives=("acc", f"latency:{dev}"),
                           accuracy=spec, evaluations=8, pop_size=4)
        assert label in cfg.accuracy_label
        res = search(cfg, tmp_path / spec[:3], predictors={dev: predictor}, progress=False)
        accs = res.archive.loc[res.archive["feasible"], "acc"]
        assert len(accs) >= 8 and accs.nunique() > 1
        assert "%" not in cfg.format_acc(float(accs.iloc[0]))  # a rating, not top-1
    bad = SearchConfig(space="small", objectives=("acc", f"latency:{dev}"),
                       accuracy=f"dna:{teacher}", evaluations=8, pop_size=4)
    with pytest.raises(SearchError, match="--accuracy dna: .*not trained with --method dna"):
        search(bad, tmp_path / "bad", predictors={dev: predictor}, progress=False)
    with pytest.raises(SearchError, match="not one of ofa-predictor:PATH, bn:PATH, dna:PATH"):
        SearchConfig(space="small", objectives=("acc",), accuracy="gamma:x")


def test_attentive_with_a_latency_predictor_and_an_accuracy_predictor(small, tmp_path):
    """AttentiveNAS's predictor variant: cost levels from the device's latency predictor,
    candidates rated by an accuracy predictor fitted on measured accuracies."""
    import pandas as pd
    from helpers import synthetic_table

    from hwnas.ops import count_batch
    from hwnas.predictor import LutSum

    dev = "cpu-onnxruntime"
    table = synthetic_table(tmp_path / f"{dev}.parquet", small,
                            {"device": "synthetic", "cpu": "x", "threads": 1,
                             "runtime": "onnxruntime"})
    predictor = LutSum(table)
    predictor.save(tmp_path / f"{dev}.predictor.json")
    archs = small.sample(60, seed=4)
    macs = count_batch(archs, small)[:, 0].astype(float)
    pd.DataFrame({"arch": [a.to_json() for a in archs],
                  "acc": 0.8 + 0.1 * np.log(macs / macs.min()) / np.log(macs.max() / macs.min())}
                 ).to_parquet(tmp_path / "acc.parquet")
    cfg = TrainConfig(method="attentive", candidates=4, pareto_cost=f"latency:{dev}",
                      pareto_rating=f"acc-table:{tmp_path / 'acc.parquet'}",
                      lut_dir=str(tmp_path))
    method = METHODS["attentive"](small, cfg, None)
    # levels are latency levels: each bin's predicted latencies lie between its neighbours'
    spans = [(predictor.predict(b).min(), predictor.predict(b).max()) for b in method.bins]
    assert len(spans) == 10 and all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))
    for pareto, pick in (("best", np.argmax), ("worst", np.argmin)):
        import dataclasses as dc

        m = METHODS["attentive"](small, dc.replace(cfg, pareto=pareto), None)
        rng = np.random.default_rng(7)
        chosen = m.pick(None, None, None, None, rng)
        rng = np.random.default_rng(7)
        pool = m.bins[int(rng.integers(len(m.bins)))]
        cands = [pool[int(i)] for i in rng.choice(len(pool), 4, replace=False)]
        assert chosen == cands[int(pick(m.accuracy(cands)))]
    with pytest.raises(TrainError, match="--pareto-cost latency:nowhere"):
        METHODS["attentive"](small, TrainConfig(method="attentive",
                                                pareto_cost="latency:nowhere",
                                                lut_dir=str(tmp_path)), None)
    with pytest.raises(TrainError, match="--pareto-rating acc-table:.*missing"):
        METHODS["attentive"](small, TrainConfig(
            method="attentive", pareto_rating=f"acc-table:{tmp_path / 'missing.parquet'}"),
            None)
    with pytest.raises(TrainError, match="pareto_cost='flops'.*macs or latency:DEVICE"):
        TrainConfig(method="attentive", pareto_cost="flops")
