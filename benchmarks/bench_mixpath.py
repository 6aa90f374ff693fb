"""Benchmark `mixpath`: does MixPath's shadow BN make a multi-path supernet rank better?

**Ground truth.** The train benchmark's setting (digits-hard at 48 px, 20 stand-alone
epochs with its recipe, ``benchmarks/results/standalone-reference.json``) on the
``mixpath-small`` space: ``--subnets`` subnets spanning its MAC range (one, two-path
layers mixed as sampled), ``--standalone-seeds`` stand-alone runs each, measured here where
the table lacks them.

**Supernets.** The sandwich rule (hwnas's default) on ``mixpath-small`` for ``--epochs``
epochs, once with shadow BN (one depthwise BN per number of active paths, MixPath) and once
with one BN for every path count, same seeds, same everything else. Subnets are rated by
top-1 with BN recalibrated, as ``hwnas search`` rates them, and again with the supernet's
own running BN statistics (no recalibration), which is where shadow BN acts: it keeps
running statistics per path count, and recalibration replaces them anyway.

**Scores.** Kendall tau against the ground truth's mean, top-5 overlap and regret under
MAC budgets, with 95% bootstrap intervals over the subnets and the paired interval of
shadow BN's tau minus one BN's (``bench_strategies.score``). MixPath's claim holds here
only if that interval lies above zero.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.bench_strategies import fill_ground_truth, plot, score, train_and_rate
from benchmarks.bench_train import REFERENCE, StandaloneReference, datasets, spanning_subnets
from benchmarks.harness import RESULTS, Result

VARIANTS = {"shadow-bn": True, "one-bn": False}


def add_arguments(parser) -> None:
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--standalone-seeds", type=int, default=2)
    parser.add_argument("--standalone-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=24, help="supernet epochs")
    parser.add_argument("--seeds", type=int, default=2, help="supernet seeds per variant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-copies", type=int, default=8)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path(".cache/mixpath"),
                        help="checkpoints (an interrupted benchmark resumes from them)")


def _diff(row: dict) -> str:
    """A row's paired tau difference to one BN, with its interval."""
    lo, hi = row["tau - one-bn 95% interval"]
    return f"{row['tau - one-bn']:+.3f} [{lo:+.2f}, {hi:+.2f}]"


def running_bn_top1(checkpoint: str, space, archs, data_key) -> list[float]:
    """Top-1 of each arch cut from the supernet as trained: its running BN statistics,
    no recalibration."""
    from hwnas.evaluate import top1
    from hwnas.train import load_supernet

    _, va = datasets(*data_key)
    net = load_supernet(checkpoint, space)
    return [top1(net.subnet(a).eval(), va, a.r) for a in archs]


def run(args):
    import torch
    from rich.progress import Progress

    from hwnas.ops import count_batch
    from hwnas.space import get_space
    from hwnas.train import TrainConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    space = get_space("mixpath-small")
    picks = spanning_subnets(space, args.subnets, args.seed + 1)
    data_key = (max(space.resolutions), args.seed, args.val_copies)
    truth_runs = fill_ground_truth(args, space, picks, StandaloneReference(REFERENCE))
    by_seed = np.array([[truth_runs[a.key, args.seed + j]["top1"]
                         for j in range(args.standalone_seeds)] for a in picks])
    truth = by_seed.mean(1)
    macs = count_batch(picks, space)[:, 0].astype(float)
    datasets(*data_key)
    jobs = [(name, args.seed + i) for name in VARIANTS for i in range(args.seeds)]
    with ProcessPoolExecutor(max(1, args.workers),
                             mp_context=multiprocessing.get_context("spawn")) as pool, \
            Progress() as bar:
        task = bar.add_task(f"{len(jobs)} supernets", total=len(jobs))
        futures = []
        for name, seed in jobs:
            cfg = dataclasses.asdict(TrainConfig(epochs=args.epochs, seed=seed,
                                                 shadow_bn=VARIANTS[name]))
            f = pool.submit(train_and_rate, (space.to_dict(), [a.to_dict() for a in picks],
                                             data_key, cfg,
                                             str(args.work / f"{name}-seed{seed}"),
                                             args.calib_batches))
            f.add_done_callback(lambda _: bar.advance(task))
            futures.append(f)
        runs = [dict(f.result(), variant=name) for f, (name, _) in zip(futures, jobs)]
    ratings = {name: np.array([r["rating"] for r in runs if r["variant"] == name])
               for name in VARIANTS}
    rows, truth_noise = score(ratings, truth, by_seed, macs, args.seed, baseline="one-bn")
    running = {f"{name} (running BN)": np.array([running_bn_top1(r["checkpoint"], space, picks,
                                                                 data_key)
                                                 for r in runs if r["variant"] == name])
               for name in VARIANTS}
    more, _ = score(running, truth, by_seed, macs, args.seed, baseline="one-bn (running BN)",
                    label="one-bn")  # one column for the paired difference in both tables
    rows += more
    diff = next(r for r in rows if r["method"] == "shadow-bn")
    lo, hi = diff["tau - one-bn 95% interval"]
    verdict = ("shadow BN ranks better than one BN beyond the bootstrap interval" if lo > 0
               else "shadow BN ranks worse than one BN beyond the bootstrap interval" if hi < 0
               else "shadow BN's effect on ranking is within the bootstrap interval here")
    figure = RESULTS / "mixpath.png"
    plot([dict(r, method=r["method"].replace(" (running BN)", "\n(running BN)"))
          for r in rows], truth_noise, figure, title="mixpath-small, shadow BN or not")
    running_diff = next(r for r in rows if r["method"] == "shadow-bn (running BN)")
    verdict += f"; rated with the supernet's running BN statistics: tau {_diff(running_diff)}"
    shown = [{"supernet": r["method"], "epochs": args.epochs,
              "train s": round(float(np.mean([x["train_s"] for x in runs
                                              if r["method"].startswith(x["variant"])]))),
              "tau": f"{r['tau']:.3f} [{r['tau 95% interval'][0]:.2f}, "
                     f"{r['tau 95% interval'][1]:.2f}]",
              "tau per seed": ", ".join(f"{t:.2f}" for t in r["tau per seed"]),
              "tau - one-bn": _diff(r) if "tau - one-bn" in r else "-",
              "top-5": f"{r['top-5 overlap']:.2f}"} for r in rows]
    return Result(
        rows=shown,
        summary={"space": space.name, "subnets": len(picks),
                 "two_path_layers_share": float(np.mean(
                     [len(k) == 2 for a in picks for _, _, k, _ in space.active_blocks(a)])),
                 "standalone_seeds": args.standalone_seeds, **truth_noise,
                 "supernet_seeds": args.seeds, "verdict": verdict,
                 "figure": str(figure.relative_to(RESULTS.parent.parent)),
                 "total_s": time.perf_counter() - t0},
        notes=["intervals: 95% bootstrap over the subnets; tau - one-bn is paired (against "
               "one-bn rated the same way)",
               "both supernets: sandwich rule, in-place distillation, same seeds and epochs; "
               "only the depthwise BN differs"],
        details={"rows": rows, "runs": [{k: v for k, v in r.items() if k != "checkpoint"}
                                        for r in runs],
                 "ground_truth": {"subnets": [a.to_dict() for a in picks],
                                  "macs": macs.tolist(), "top1_by_seed": by_seed.tolist()}})
