"""Benchmark `train`: the supernet on the embedded digits-hard data and the small space.

Reports top-1 of the largest and smallest subnets (BN recalibrated) and the ranking
benchmark: Kendall tau between the supernet's accuracy of >= 10 subnets spanning the MAC
range (log-spaced from the smallest arch's MACs to the largest's, see
:func:`spanning_subnets`) and the accuracy of the same subnets trained stand-alone from
scratch (the mean of ``--standalone-seeds`` runs, 3 by default), plus training throughput.

The data is digits-hard: its training split gets a fresh random distortion of every
digit in every epoch, its validation split is a fixed draw of the same distortion
(``--val-copies`` copies of each of the 359 validation digits). Both matter for the
ranking. On fixed distorted copies every stand-alone net memorised the training set
(~100% training top-1) and validation accuracy was mostly seed luck: seed-to-seed SD 0.38
points against a true spread of 0.53 between the 10 subnets, so no supernet could be
expected to reach tau 0.6 against one stand-alone seed. With fresh distortions accuracy
grows with capacity, and one stand-alone seed ranks the subnets with a reliability of about
0.8; still, two stand-alone runs of the same 10 subnets agree only at tau 0.47-0.73, which
caps what any supernet can score against one run. So the ground truth is the mean of three
runs, and the result reports how well they agree with each other
(``standalone_seed_vs_seed_tau``) and the supernet's tau against each. Fewer stand-alone
epochs are no way out: after 10 epochs the nets are at ~85% and two seeds rank them at
tau -0.16.

Stand-alone training is the ground truth, and it does not depend on the supernet being
benchmarked, so (as NAS-Bench-201 does for its search spaces) its results are kept in a
table, ``benchmarks/results/standalone-reference.json``, and measured only where the table
lacks a run: one row per (setting, subnet, seed), written as each run finishes, so an
interrupted benchmark loses no finished run and never measures one twice. A row is reused
only if everything that shapes it matches: the space, the data set and its augmentation,
the data seed, the validation copies, the stand-alone epochs and recipe, and the torch
version. The result says how many runs were reused and how many core-seconds they took
when measured (30 runs, about 1850 core-seconds: 19 minutes of this 2-core machine beside
the supernet); ``--no-reference`` measures them all in this run. The table's runs were
measured on an Intel Xeon with AVX-512; another CPU's oneDNN kernels sum in another order,
so its own runs would differ by seed-noise-sized amounts.

Both parts run at once, one thread each (these nets are too small to use two threads
well): one worker process trains the supernet while the other trains stand-alone nets,
largest first, and the first worker joins it when the supernet is done. Stand-alone runs
share one seed (the same batch order and distortions for every subnet), so their
differences come from the architectures. A run's accuracy depends on its thread count
(float summation order), not on which worker ran it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, Result

REFERENCE = RESULTS / "standalone-reference.json"

# How every stand-alone net is trained; part of each reference row's setting.
STANDALONE_RECIPE = {"optimizer": "SGD, Nesterov momentum 0.9", "lr": 0.05,
                     "weight_decay": 3e-5, "batch_size": 64, "schedule": "one-cycle",
                     "label_smoothing": 0.1, "threads": 1}


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=30, help="supernet epochs")
    parser.add_argument("--n-random", type=int, default=2,
                        help="random subnets per supernet step besides largest and smallest")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="in-place distillation from the largest subnet")
    parser.add_argument("--lr", type=float, default=0.05, help="supernet learning rate")
    parser.add_argument("--smallest-resolution", default="random", choices=("random", "min"),
                        help="the smallest subnet's resolution in the sandwich")
    parser.add_argument("--standalone-epochs", type=int, default=20)
    parser.add_argument("--n-subnets", type=int, default=10)
    parser.add_argument("--standalone-seeds", type=int, default=3,
                        help="stand-alone runs per subnet, averaged")
    parser.add_argument("--reference", type=Path, default=REFERENCE,
                        help="table of stand-alone runs: reused where it has the run, "
                        "extended where it lacks it")
    parser.add_argument("--no-reference", dest="reference", action="store_const", const=None,
                        help="measure every stand-alone run in this run; read and write "
                        "no table")
    parser.add_argument("--calib-batches", type=int, default=8,
                        help="training batches (of 128) to recalibrate BN per subnet")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes, one thread each: the supernet in one, stand-alone "
                        "runs in the others")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-copies", type=int, default=8,
                        help="differently distorted copies of each validation digit")


@functools.lru_cache(maxsize=1)
def datasets(resolution: int, seed: int, val_copies: int):
    """The benchmark's train and validation sets (built once per process)."""
    from hwnas.data import digits_hard

    return digits_hard(resolution, seed=seed, val_copies=val_copies)


class StandaloneReference:
    """Stand-alone top-1 of (setting, subnet, seed), kept across runs in a JSON file.

    Each finished run is written at once (atomically), so an interrupted benchmark keeps
    every run it finished and re-measures none of them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.settings: dict[str, dict] = {}
        self.runs: dict[tuple[str, str, int], dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.settings = dict(data["settings"])
                self.runs = {(r["setting"], r["arch"], int(r["seed"])): r for r in data["runs"]}
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"stand-alone reference {self.path} is not a reference "
                                 f"table ({e!r}); move it away or pass --no-reference") from e

    @staticmethod
    def setting_id(setting: dict) -> str:
        text = json.dumps(setting, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def get(self, setting: dict, arch_key: str, seed: int) -> dict | None:
        return self.runs.get((self.setting_id(setting), arch_key, seed))

    def add(self, setting: dict, arch_key: str, seed: int, top1: float, seconds: float) -> None:
        from hwnas.fingerprint import host_fingerprint

        sid = self.setting_id(setting)
        self.settings[sid] = setting
        self.runs[(sid, arch_key, seed)] = {
            "setting": sid, "arch": arch_key, "seed": seed, "top1": top1,
            "seconds": round(seconds, 2), "cpu": host_fingerprint().get("cpu"),
            "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        payload = {"about": "stand-alone top-1 of subnets trained from scratch by "
                            "benchmarks/bench_train.py; the ranking benchmark's ground truth",
                   "settings": self.settings,
                   "runs": sorted(self.runs.values(),
                                  key=lambda r: (r["setting"], r["arch"], r["seed"]))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.path)


def train_standalone(net, train, arch, epochs: int, seed: int) -> None:
    """Train ``net`` from scratch with :data:`STANDALONE_RECIPE`: SGD with Nesterov
    momentum, one-cycle schedule, label smoothing, and the training set's augmentation
    drawn afresh every batch."""
    import torch
    import torch.nn.functional as F

    from hwnas.data import model_input
    from hwnas.train import seeded

    recipe = STANDALONE_RECIPE
    batch_size, lr = recipe["batch_size"], recipe["lr"]
    torch.manual_seed(seed)
    for m in net.modules():  # fresh weights: stand-alone means trained from scratch
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=recipe["weight_decay"])
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 100 + epoch)
        for x, y in train.batches(batch_size, True, g, augment=seeded(seed, epoch)):
            opt.zero_grad()
            F.cross_entropy(net(model_input(x, arch.r)), y,
                            label_smoothing=recipe["label_smoothing"]).backward()
            opt.step()
            sched.step()


def spanning_subnets(space, n: int, seed: int, exclude=()) -> list:
    """``n`` archs whose MACs are log-spaced from the smallest arch's to the largest's
    (none of ``exclude``, archs already chosen, so that a ground truth grows by adding).

    Uniform sampling crowds the middle of the MAC range (its 400-sample quantiles cover
    1.1-6.9 M of the small space's 0.79-10 M), where the subnets are nearly alike. A
    ladder of samplers skewed from all-smallest to all-largest choices (each gene drawn
    Binomial(choices - 1, p), p from 0 to 1) fills the whole range; the pick for each
    target is the nearest unused arch."""
    from hwnas.ops import count_batch

    rng = np.random.default_rng(seed)
    hi = space.bounds[1]
    pool = {a.key: a for a in (space.smallest(), space.largest())}
    for p in np.linspace(0, 1, 41)[1:-1]:
        for _ in range(25):
            a = space.decode(rng.binomial(hi, p))
            pool.setdefault(a.key, a)
    archs = list(pool.values())
    macs = count_batch(archs, space)[:, 0].astype(float)
    taken = {a.key for a in exclude}
    chosen: list[int] = [i for i, a in enumerate(archs) if a.key in taken]
    for target in np.geomspace(macs.min(), macs.max(), n):
        nearest = np.argsort(np.abs(np.log(macs / target)))
        chosen.append(next(int(i) for i in nearest if i not in chosen))
    chosen = [i for i in chosen if archs[i].key not in taken]
    return [archs[i] for i in sorted(chosen, key=lambda i: macs[i])]


def train_supernet(job: tuple) -> tuple[str, list[dict], float]:
    """The supernet, in a worker process: checkpoint path, history, seconds."""
    import torch

    from hwnas.space import SearchSpace
    from hwnas.train import TrainConfig, train

    space_dict, data_key, cfg, out = job
    torch.set_num_threads(1)
    tr, _ = datasets(*data_key)
    t = time.perf_counter()
    res = train(SearchSpace.from_dict(space_dict), tr, TrainConfig(**cfg), out,
                resume=False, progress=False)
    return str(res.checkpoint), res.history, time.perf_counter() - t


def standalone_top1(job: tuple) -> tuple[float, float]:
    """One stand-alone run, in a worker process: a fresh net trained from scratch; its
    top-1 and seconds."""
    import torch

    from hwnas.evaluate import top1
    from hwnas.ops import build_network, ops
    from hwnas.space import SearchSpace

    space_dict, arch_dict, data_key, epochs, seed = job
    torch.set_num_threads(STANDALONE_RECIPE["threads"])
    t = time.perf_counter()
    space = SearchSpace.from_dict(space_dict)
    arch = space.arch(arch_dict)
    tr, va = datasets(*data_key)
    net = build_network(ops(arch, space))
    train_standalone(net, tr, arch, epochs, seed)
    return top1(net.eval(), va, arch.r), time.perf_counter() - t


def reference_setting(space, train, data_key: tuple, epochs: int) -> dict:
    """Everything besides the subnet and the seed that shapes a stand-alone run."""
    import torch

    _, data_seed, val_copies = data_key
    return {"space": space.name, "space_id": space.id,
            "data": train.name.removesuffix("-train"), "augment": repr(train.augment),
            "data_seed": data_seed, "val_copies": val_copies, "epochs": epochs,
            "recipe": STANDALONE_RECIPE, "torch": torch.__version__}


def run(args) -> Result:
    import dataclasses

    import torch
    from rich.progress import Progress
    from scipy.stats import kendalltau

    from hwnas.evaluate import subnet_accuracy
    from hwnas.ops import count_batch
    from hwnas.space import get_space
    from hwnas.train import TrainConfig, load_supernet

    torch.set_num_threads(1)
    space = get_space("small")
    data_key = (max(space.resolutions), args.seed, args.val_copies)
    tr, va = datasets(*data_key)
    cfg = TrainConfig(epochs=args.epochs, n_random=args.n_random, distill=args.distill,
                      lr=args.lr, smallest_resolution=args.smallest_resolution,
                      seed=args.seed)
    picks = spanning_subnets(space, args.n_subnets, args.seed + 1)
    setting = reference_setting(space, tr, data_key, args.standalone_epochs)
    reference = StandaloneReference(args.reference) if args.reference else None
    # seed j is shared by every subnet; the mean over seeds is each subnet's accuracy.
    # Largest first, so that the workers finish together.
    wanted = [(arch, args.seed + j) for arch in reversed(picks)
              for j in range(args.standalone_seeds)]
    known = {(a.key, s): reference.get(setting, a.key, s) for a, s in wanted} if reference else {}
    missing = [(a, s) for a, s in wanted if not known.get((a.key, s))]

    def record(arch, seed, future) -> None:
        if reference is not None and future.exception() is None:
            reference.add(setting, arch.key, seed, *future.result())

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.workers),
                             mp_context=multiprocessing.get_context("spawn")) as pool, \
            Progress() as bar, tempfile.TemporaryDirectory() as out:
        supernet = pool.submit(train_supernet, (space.to_dict(), data_key,
                                                dataclasses.asdict(cfg), out))
        runs = {}
        for arch, seed in missing:
            runs[arch.key, seed] = f = pool.submit(
                standalone_top1,
                (space.to_dict(), arch.to_dict(), data_key, args.standalone_epochs, seed))
            f.add_done_callback(functools.partial(record, arch, seed))
        task = bar.add_task(f"supernet + {len(runs)} stand-alone runs", total=1 + len(runs))
        for f in [supernet, *runs.values()]:
            f.add_done_callback(lambda _: bar.advance(task))
        ckpt, history, train_s = supernet.result()
        net = load_supernet(ckpt, space)
        accs = subnet_accuracy(net, [space.largest(), space.smallest()] + picks, tr, va,
                               calib_batches=args.calib_batches, seed=args.seed)
        extremes, super_acc = accs[:2], accs[2:]
        measured = {k: f.result() for k, f in runs.items()}
        standalone_s = time.perf_counter() - t0
    outcome = {(a.key, s): measured.get((a.key, s)) or (known[a.key, s]["top1"],
                                                       known[a.key, s]["seconds"])
               for a, s in wanted}
    alone_runs = np.asarray([outcome[a.key, s][0] for a, s in wanted])
    core_s = float(sum(t for _, t in outcome.values()))
    by_seed = alone_runs.reshape(len(picks), args.standalone_seeds)[::-1]
    alone = by_seed.mean(1)
    tau = float(kendalltau(super_acc, alone).statistic)
    # how well stand-alone training agrees with itself: the ceiling for any supernet
    seed_taus = [float(kendalltau(by_seed[:, i], by_seed[:, j]).statistic)
                 for i in range(args.standalone_seeds) for j in range(i)]
    agreement = {"standalone_seed_vs_seed_tau": float(np.mean(seed_taus)),
                 "supernet_vs_each_seed_tau": [float(kendalltau(super_acc, col).statistic)
                                               for col in by_seed.T]} if seed_taus else {}
    rows = [{"subnet": space.arch_name(a)[:40], "MACs (M)": float(m) / 1e6,
             "supernet top-1": float(s), "stand-alone top-1": float(t)}
            for a, m, s, t in zip(picks, count_batch(picks, space)[:, 0], super_acc, alone)]
    ips = float(np.mean([h["images_per_s"] for h in history]))
    total = time.perf_counter() - t0
    return Result(
        rows=rows,
        summary={"data": tr.name.removesuffix("-train"), "train_images": len(tr),
                 "val_images": len(va), "epochs": args.epochs, "n_random": args.n_random,
                 "distill": args.distill, "lr": args.lr,
                 "smallest_resolution": args.smallest_resolution,
                 "standalone_epochs": args.standalone_epochs,
                 "standalone_seeds": args.standalone_seeds,
                 "standalone_runs_measured_now": len(measured),
                 "standalone_runs_from_reference": len(wanted) - len(measured),
                 "standalone_core_s": core_s,
                 "workers": args.workers,
                 "threads_per_worker": 1, "supernet_train_s": train_s,
                 "supernet_and_standalone_s": standalone_s,
                 "train_images_per_s": ips,
                 "largest_top1": float(extremes[0]), "smallest_top1": float(extremes[1]),
                 "kendall_tau": tau, **agreement, "total_s": total},
        targets={"largest top-1": (float(extremes[0]), 0.95, "ge"),
                 "smallest top-1": (float(extremes[1]), 0.90, "ge"),
                 "ranking Kendall tau (supernet vs stand-alone)": (tau, 0.6, "ge"),
                 "benchmark wall time, s": (total, 600.0, "le")},
        notes=["supernet images/s is one thread's, while the other core trained "
               "stand-alone nets" if measured else "supernet images/s is one thread's",
               f"{len(wanted) - len(measured)} of {len(wanted)} stand-alone runs read from "
               f"{os.path.relpath(args.reference)} (measured earlier by this benchmark, "
               f"same setting); {len(measured)} measured in this run; all of them took "
               f"{core_s:.0f} core-seconds"
               if reference else "every stand-alone run measured in this run"])
