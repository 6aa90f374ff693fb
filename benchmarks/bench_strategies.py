"""Benchmark `strategies`: supernet training methods side by side, against one ground truth.

**Ground truth.** The stand-alone reference table of ``python -m benchmarks train``
(``benchmarks/results/standalone-reference.json``), grown to 30 subnets: the train
benchmark's 10 plus 20 more spanning the same MAC range (log-spaced, 0.8-10 MMACs), 3
stand-alone seeds each, on digits-hard. Runs the table lacks are measured here (about a
minute of one core each) and written to it as they finish. Its own noise is reported: the
seed-vs-seed Kendall tau, the ceiling for any method's tau against one seed.

**Methods.** Each of ``hwnas train --method`` (sandwich, fairnas, attentive, pinas, dna)
is trained for ``--seeds`` training seeds at equal wall-clock cost: every method gets
``--budget-s`` seconds of one core, turned into epochs from its own cost per step, timed
here before the runs (each run's real training time is reported beside it). DNA's teacher
is the sandwich run of the same seed (its cost not charged to DNA). BN-NAS's indicator is
a rating, not a training method: it is read from the sandwich runs' weights at no extra
cost. Subnets are rated by top-1 with BN recalibrated (sandwich, fairnas, attentive; Pi-NAS
with its mean teacher), by minus DNA's block losses (dna) and by the BN-γ indicator (bn).

**Scores.** Per method, the mean over training seeds of: Kendall tau against the ground
truth's mean, the top-5 overlap (how many of the true best 5 the method's best 5 hold),
and the regret of picking the method's best subnet under three MAC budgets (the quartiles
of the 30 subnets' MACs): the true top-1 lost against the true best under that budget,
in points. Intervals are 95% bootstrap intervals over the 30 subnets (1000 resamples,
the same resamples for every method); the difference of each method's tau from the
sandwich rule's gets its own paired interval, and a method beats the sandwich rule only if
that interval lies above zero.

Checkpoints go to ``--work`` (default ``.cache/strategies``); an interrupted benchmark
resumes each run where its last epoch ended.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from benchmarks.bench_train import (REFERENCE, StandaloneReference, datasets,
                                    reference_setting, spanning_subnets, standalone_top1)
from benchmarks.harness import RESULTS, Result

METHODS = ("sandwich", "fairnas", "attentive", "pinas", "dna")
RATINGS = METHODS + ("bn",)
BOOTSTRAP = 1000
# the train benchmark's 10 subnets come first, so its rows are reused as they are
TRAIN_BENCH_SUBNETS = 10


def add_arguments(parser) -> None:
    parser.add_argument("--subnets", type=int, default=30,
                        help="ground-truth subnets (the train benchmark's 10 first)")
    parser.add_argument("--standalone-seeds", type=int, default=3)
    parser.add_argument("--standalone-epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-copies", type=int, default=8)
    parser.add_argument("--ground-truth-only", action="store_true",
                        help="fill the reference table and stop")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="training methods to compare (bn is read from sandwich)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per method")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="training seconds of one core per run, equal for every method")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path(".cache/strategies"),
                        help="checkpoints (an interrupted benchmark resumes from them)")


def ground_truth_subnets(space, n: int, seed: int) -> list:
    """The train benchmark's subnets, then ``n - 10`` more over the same MAC range."""
    first = spanning_subnets(space, min(n, TRAIN_BENCH_SUBNETS), seed + 1)
    more = spanning_subnets(space, n - len(first), seed + 1, exclude=first) \
        if n > len(first) else []
    return first + more


def fill_ground_truth(args, space, picks, reference: StandaloneReference) -> dict:
    """Every (subnet, seed) run of the ground truth: read from the table, or measured now
    (largest first, so the workers finish together) and written to it as it ends."""
    from rich.progress import Progress

    data_key = (max(space.resolutions), args.seed, args.val_copies)
    tr, _ = datasets(*data_key)
    setting = reference_setting(space, tr, data_key, args.standalone_epochs)
    wanted = [(a, args.seed + j) for a in picks for j in range(args.standalone_seeds)]
    missing = [(a, s) for a, s in wanted if not reference.get(setting, a.key, s)]
    missing.sort(key=lambda p: -picks.index(p[0]))

    def record(arch, seed, future) -> None:
        if future.exception() is None:
            reference.add(setting, arch.key, seed, *future.result())

    if missing:
        with ProcessPoolExecutor(max(1, args.workers),
                                 mp_context=multiprocessing.get_context("spawn")) as pool, \
                Progress() as bar:
            task = bar.add_task(f"{len(missing)} stand-alone runs", total=len(missing))
            futures = []
            for arch, seed in missing:
                f = pool.submit(standalone_top1, (space.to_dict(), arch.to_dict(), data_key,
                                                  args.standalone_epochs, seed))
                f.add_done_callback(functools.partial(record, arch, seed))
                f.add_done_callback(lambda _: bar.advance(task))
                futures.append(f)
            for f in futures:
                f.result()
    return {(a.key, s): reference.get(setting, a.key, s) for a, s in wanted}


def train_config(method: str, seed: int, epochs: int, teacher: str | None = None):
    from hwnas.train import TrainConfig

    return TrainConfig(epochs=epochs, method=method, seed=seed,
                       teacher=teacher if method == "dna" else None)


def seconds_per_step(space, data_key, steps: int = 6) -> dict[str, float]:
    """Each method's training cost per step, timed here one after another (one thread;
    the first step of each is left out: it builds caches)."""
    import tempfile

    from hwnas.train import train

    tr, _ = datasets(*data_key)
    cost = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train(space, tr, train_config("sandwich", 0, 1), Path(tmp) / "teacher",
                        progress=False, max_steps=1).checkpoint
        for method in METHODS:
            one = time.perf_counter()
            train(space, tr, train_config(method, 0, 1, str(teacher)), Path(tmp) / method,
                  progress=False, max_steps=1)
            one = time.perf_counter() - one
            t = time.perf_counter()
            train(space, tr, train_config(method, 0, 1, str(teacher)),
                  Path(tmp) / (method + "-t"), progress=False, max_steps=steps + 1)
            cost[method] = (time.perf_counter() - t - one) / steps
    return cost


def train_and_rate(job: tuple) -> dict:
    """One method, one seed, in a worker process: train (resuming what a previous run of
    the benchmark left), then rate the ground-truth subnets."""
    import torch

    from hwnas.evaluate import subnet_accuracy
    from hwnas.space import SearchSpace
    from hwnas.train import TrainConfig, load_supernet, train

    space_dict, arch_dicts, data_key, cfg, out, calib_batches = job
    torch.set_num_threads(1)
    space = SearchSpace.from_dict(space_dict)
    archs = [space.arch(a) for a in arch_dicts]
    tr, va = datasets(*data_key)
    cfg = TrainConfig(**cfg)
    out = Path(out)
    spent = out / "seconds.json"
    before = json.loads(spent.read_text())["seconds"] if spent.exists() else 0.0
    t = time.perf_counter()
    res = train(space, tr, cfg, out, progress=False)
    seconds = before + time.perf_counter() - t
    spent.write_text(json.dumps({"seconds": seconds}))
    if cfg.method == "dna":
        from hwnas.methods.dna import DnaRating

        rating = DnaRating(res.checkpoint, space, va, images=1024)(archs)
    else:
        rating = subnet_accuracy(load_supernet(res.checkpoint, space), archs, tr, va,
                                 calib_batches=calib_batches, seed=cfg.seed)
    return {"method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
            "train_s": seconds, "checkpoint": str(res.checkpoint),
            "rating": [float(v) for v in rating]}


def run_methods(args, space, picks, data_key, epochs: dict[str, int], methods) -> list[dict]:
    """Every (method, seed) run on ``args.workers`` processes; each DNA run starts when
    the sandwich run of its seed (its teacher) is done."""
    from rich.progress import Progress

    def job(method, seed, teacher=None):
        cfg = dataclasses.asdict(train_config(method, seed, epochs[method], teacher))
        return (space.to_dict(), [a.to_dict() for a in picks], data_key, cfg,
                str(args.work / f"budget-{args.budget_s:g}s" / f"{method}-seed{seed}"),
                args.calib_batches)

    seeds = [args.seed + i for i in range(args.seeds)]
    order = [(m, s) for m in methods if m != "dna" for s in seeds]
    if "dna" in methods and "sandwich" not in methods:
        raise SystemExit("dna is taught by the sandwich runs: keep sandwich in --methods")
    done: list[dict] = []
    with ProcessPoolExecutor(max(1, args.workers),
                             mp_context=multiprocessing.get_context("spawn")) as pool, \
            Progress() as bar:
        task = bar.add_task(f"{len(methods) * len(seeds)} training runs",
                            total=len(methods) * len(seeds))
        pending = {pool.submit(train_and_rate, job(m, s)): (m, s) for m, s in order}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                pending.pop(f)
                out = f.result()
                done.append(out)
                bar.advance(task)
                if out["method"] == "sandwich" and "dna" in methods:
                    pending[pool.submit(train_and_rate, job("dna", out["seed"],
                                                            out["checkpoint"]))] = \
                        ("dna", out["seed"])
    return done


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def top5_overlap(rating: np.ndarray, truth: np.ndarray) -> float:
    return len(set(np.argsort(-rating)[:5]) & set(np.argsort(-truth)[:5])) / 5


def regret(rating: np.ndarray, truth: np.ndarray, macs: np.ndarray, budget: float) -> float:
    """True top-1 lost (points) by taking the best-rated subnet within ``budget`` MACs
    (nan if none fits, as in a bootstrap resample that drew no small subnet)."""
    ok = np.flatnonzero(macs <= budget)
    if not len(ok):
        return float("nan")
    pick = ok[int(np.argmax(rating[ok]))]
    return float(100 * (truth[ok].max() - truth[pick]))


def interval(values: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def score(ratings: dict[str, np.ndarray], truth: np.ndarray, by_seed: np.ndarray,
          macs: np.ndarray, seed: int, baseline: str = "sandwich", label: str | None = None
          ) -> tuple[list[dict], dict]:
    """The table: each method's scores (means over its training seeds) with bootstrap
    intervals over subnets, each one's tau minus ``baseline``'s (paired interval, in the
    column ``tau - <label>``, ``label`` defaulting to the baseline), and the ground truth's
    own agreement."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    resamples = [rng.integers(0, n, n) for _ in range(BOOTSTRAP)]
    budgets = np.quantile(macs, [0.25, 0.5, 0.75])
    metrics = {"tau": lambda r, t, _: kendall(r, t),
               "top-5 overlap": lambda r, t, _: top5_overlap(r, t),
               **{f"regret @ MACs p{q} (points)": functools.partial(regret, budget=b)
                  for q, b in zip((25, 50, 75), budgets)}}

    def mean_over_seeds(fn, r: np.ndarray, idx) -> float:  # r: seeds x subnets
        return float(np.nanmean([fn(row[idx], truth[idx], macs[idx]) for row in r]))

    everything = np.arange(n)
    rows, boot = [], {}
    for m, r in ratings.items():
        row = {"method": m}
        for name, fn in metrics.items():
            row[name] = mean_over_seeds(fn, r, everything)
            boot[m, name] = np.array([mean_over_seeds(fn, r, i) for i in resamples])
            row[f"{name} 95% interval"] = interval(boot[m, name])
        row["tau per seed"] = [kendall(x, truth) for x in r]
        rows.append(row)
    for row in rows:
        if baseline in ratings and row["method"] != baseline:
            base = next(x for x in rows if x["method"] == baseline)
            row[f"tau - {label or baseline}"] = row["tau"] - base["tau"]
            row[f"tau - {label or baseline} 95% interval"] = interval(
                boot[row["method"], "tau"] - boot[baseline, "tau"])
    pairs = [(i, j) for i in range(by_seed.shape[1]) for j in range(i)]
    seed_tau = float(np.mean([kendall(by_seed[:, i], by_seed[:, j]) for i, j in pairs]))
    seed_boot = np.array([np.mean([kendall(by_seed[idx, i], by_seed[idx, j])
                                   for i, j in pairs]) for idx in resamples])
    truth_noise = {"subnets": n, "standalone_seed_vs_seed_tau": seed_tau,
                   "standalone_seed_vs_seed_tau_interval": interval(seed_boot),
                   "mac_budgets_M": [float(b) / 1e6 for b in budgets]}
    return rows, truth_noise


def plot(rows: list[dict], truth_noise: dict, path: Path,
         title: str = "equal training time") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = np.arange(len(rows))
    taus = [r["tau"] for r in rows]
    lo = [r["tau"] - r["tau 95% interval"][0] for r in rows]
    hi = [r["tau 95% interval"][1] - r["tau"] for r in rows]
    ax.errorbar(xs, taus, yerr=[lo, hi], fmt="o", capsize=4, color="tab:blue",
                label="mean over training seeds, 95% bootstrap interval")
    for x, r in zip(xs, rows):
        ax.plot([x] * len(r["tau per seed"]), r["tau per seed"], ".", color="tab:gray",
                ms=5)
    ax.axhspan(*truth_noise["standalone_seed_vs_seed_tau_interval"], color="tab:green",
               alpha=0.15, label="stand-alone seed vs seed, 95% interval")
    ax.set_xticks(xs, [r["method"] for r in rows])
    ax.set_ylabel("Kendall tau vs stand-alone")
    ax.set_title(f"Ranking of {truth_noise['subnets']} subnets (digits-hard), {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args):
    import torch

    from hwnas.methods.bnnas import BnIndicator
    from hwnas.ops import count_batch
    from hwnas.space import get_space

    torch.set_num_threads(1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
    space = get_space("small")
    picks = ground_truth_subnets(space, args.subnets, args.seed)
    data_key = (max(space.resolutions), args.seed, args.val_copies)
    t0 = time.perf_counter()
    reference = StandaloneReference(REFERENCE)
    truth_runs = fill_ground_truth(args, space, picks, reference)
    if args.ground_truth_only:
        return Result(rows=[], summary={"ground_truth_runs": len(truth_runs),
                                        "seconds": time.perf_counter() - t0})
    by_seed = np.array([[truth_runs[a.key, args.seed + j]["top1"]
                         for j in range(args.standalone_seeds)] for a in picks])
    truth = by_seed.mean(1)
    macs = count_batch(picks, space)[:, 0].astype(float)
    tr, _ = datasets(*data_key)
    steps_per_epoch = len(range(0, len(tr), 64))
    args.work.mkdir(parents=True, exist_ok=True)
    # timed once per work folder: a resumed benchmark keeps its runs' epochs
    timing = args.work / "seconds_per_step.json"
    cost = json.loads(timing.read_text()) if timing.exists() else {}
    if sorted(cost) != sorted(METHODS):
        cost = seconds_per_step(space, data_key)
        timing.write_text(json.dumps(cost))
    epochs = {m: max(1, round(args.budget_s / (cost[m] * steps_per_epoch))) for m in METHODS}
    runs = run_methods(args, space, picks, data_key, epochs, methods)
    ratings = {m: np.array([r["rating"] for r in sorted(runs, key=lambda r: r["seed"])
                            if r["method"] == m]) for m in methods}
    if "sandwich" in methods:  # BN-NAS's indicator, from the sandwich runs' weights
        ratings["bn"] = np.array([BnIndicator(r["checkpoint"], space)(picks)
                                  for r in sorted(runs, key=lambda r: r["seed"])
                                  if r["method"] == "sandwich"])
    rows, truth_noise = score(ratings, truth, by_seed, macs, args.seed)
    train_s = {m: [r["train_s"] for r in runs if r["method"] == m] for m in methods}
    for row in rows:
        m = row["method"]
        row["epochs"] = epochs.get(m, epochs["sandwich"])
        row["train s per run"] = float(np.mean(train_s.get(m, train_s.get("sandwich", [0]))))
        row["s per step (timed)"] = cost.get(m, cost["sandwich"])
    beats = [r["method"] for r in rows if r.get("tau - sandwich 95% interval", [0])[0] > 0]
    figure = RESULTS / "strategies.png"
    plot(rows, truth_noise, figure)
    shown = [{"method": r["method"], "epochs": r["epochs"],
              "train s": round(r["train s per run"]),
              "tau": f"{r['tau']:.3f} [{r['tau 95% interval'][0]:.2f}, "
                     f"{r['tau 95% interval'][1]:.2f}]",
              "tau - sandwich": (f"{r['tau - sandwich']:+.3f} "
                                 f"[{r['tau - sandwich 95% interval'][0]:+.2f}, "
                                 f"{r['tau - sandwich 95% interval'][1]:+.2f}]"
                                 if "tau - sandwich" in r else "-"),
              "top-5": "{:.2f} [{:.1f}, {:.1f}]".format(r["top-5 overlap"],
                                                        *r["top-5 overlap 95% interval"]),
              **{k.replace(" (points)", "").replace("regret @ MACs ", "regret "):
                 "{:.2f} [{:.2f}, {:.2f}]".format(r[k], *r[f"{k} 95% interval"])
                 for k in r if k.startswith("regret") and not k.endswith("interval")}}
             for r in rows]
    verdict = (f"{', '.join(beats)} beat(s) the sandwich rule's tau beyond the bootstrap "
               f"interval" if beats else "no method beats the sandwich rule's tau beyond "
               "the bootstrap interval on this task")
    return Result(
        rows=shown,
        summary={"standalone_seeds": args.standalone_seeds, **truth_noise,
                 "training_seeds": args.seeds, "budget_s_per_run": args.budget_s,
                 "verdict": verdict, "figure": str(figure.relative_to(RESULTS.parent.parent)),
                 "total_s": time.perf_counter() - t0},
        notes=[f"intervals: 95% bootstrap over the {len(picks)} subnets ({BOOTSTRAP} "
               "resamples, the same for every method); tau - sandwich is paired",
               "bn is BN-NAS's BN-γ indicator read from the sandwich runs' weights (no "
               "training of its own); dna's teacher is the sandwich run of its seed",
               "regret: true stand-alone top-1 lost (points) by the method's pick under "
               f"each MAC budget (quartiles of the {len(picks)} subnets' MACs)"],
        details={"rows": rows, "runs": [{k: v for k, v in r.items() if k != "checkpoint"}
                                        for r in runs],
                 "seconds_per_step": cost, "ground_truth": {
                     "subnets": [a.to_dict() for a in picks], "macs": macs.tolist(),
                     "top1_by_seed": by_seed.tolist()}})
