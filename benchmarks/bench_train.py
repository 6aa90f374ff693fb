"""Benchmark `train`: the supernet on the embedded digits data and the small space.

Reports top-1 of the largest and smallest subnets (BN recalibrated) and the ranking
benchmark: Kendall tau between the supernet's accuracy of >= 10 subnets spanning the MAC
range (log-spaced from the smallest arch's MACs to the largest's, see
:func:`spanning_subnets`) and the accuracy of the same subnets trained stand-alone from
scratch, plus training throughput. Everything is measured in this run.

The default data is digits-hard with 2 distorted copies of each training image and 8 of
each validation image (2,876 / 2,872 images). On plain digits every subnet scores 98-99%,
1-2 validation images apart, so no ranking can be measured; with one copy of 359
validation images one image is 0.28% and the ranking is noise (tau 0.05 in a 20-epoch
run). Stand-alone runs share one seed (the same batch order for every subnet), so their
differences come from the architectures rather than from the draw; one seed still leaves
them noisy, and `--standalone-seeds 3` averages three. The stand-alone runs go to
`--workers` processes with the threads split among them (1.5x faster here than one
process on both threads: these nets are too small to use two threads well). A run's
accuracy depends on its thread count (float summation order), not on which worker ran it.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-random", type=int, default=2,
                        help="random subnets per supernet step besides largest and smallest")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="in-place distillation from the largest subnet")
    parser.add_argument("--lr", type=float, default=0.05, help="supernet learning rate")
    parser.add_argument("--standalone-epochs", type=int, default=10)
    parser.add_argument("--n-subnets", type=int, default=10)
    parser.add_argument("--standalone-seeds", type=int, default=1,
                        help="stand-alone runs per subnet, averaged (each ~30 s here)")
    parser.add_argument("--calib-batches", type=int, default=8,
                        help="training batches (of 128) to recalibrate BN per subnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for the stand-alone runs (threads are split among "
                        "them: small nets train faster side by side than on 2 threads each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="digits-hard", help="digits or digits-hard (the same, "
                        "distorted and noisy, so that accuracy does not saturate)")
    parser.add_argument("--train-copies", type=int, default=2,
                        help="digits-hard: differently distorted copies of each training image")
    parser.add_argument("--val-copies", type=int, default=8,
                        help="digits-hard: copies of each validation image (finer accuracy)")


def train_standalone(net, train, arch, epochs: int, seed: int, batch_size: int = 64) -> None:
    import torch
    import torch.nn.functional as F

    from hwnas.data import model_input

    torch.manual_seed(seed)
    for m in net.modules():  # fresh weights: stand-alone means trained from scratch
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=3e-5)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 100 + epoch)
        for x, y in train.batches(batch_size, True, g):
            opt.zero_grad()
            F.cross_entropy(net(model_input(x, arch.r)), y, label_smoothing=0.1).backward()
            opt.step()
            sched.step()


def spanning_subnets(space, n: int, seed: int) -> list:
    """``n`` archs whose MACs are log-spaced from the smallest arch's to the largest's.

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
    chosen: list[int] = []
    for target in np.geomspace(macs.min(), macs.max(), n):
        nearest = np.argsort(np.abs(np.log(macs / target)))
        chosen.append(next(int(i) for i in nearest if i not in chosen))
    return [archs[i] for i in sorted(chosen, key=lambda i: macs[i])]


@functools.lru_cache(maxsize=1)
def datasets(data: str, resolution: int, seed: int, train_copies: int, val_copies: int):
    """The benchmark's train and validation sets (built once per process)."""
    from hwnas.data import digits_hard, load_dataset

    if data == "digits-hard":
        return digits_hard(resolution, seed=seed, train_copies=train_copies,
                           val_copies=val_copies)
    return load_dataset(data, resolution, seed=seed)


def standalone_top1(job: tuple) -> float:
    """One stand-alone run, in a worker process: a fresh net trained from scratch, top-1."""
    import torch

    from hwnas.evaluate import top1
    from hwnas.ops import build_network, ops
    from hwnas.space import SearchSpace

    space_dict, arch_dict, data_key, epochs, seed, threads = job
    torch.set_num_threads(threads)
    space = SearchSpace.from_dict(space_dict)
    arch = space.arch(arch_dict)
    tr, va = datasets(*data_key)
    net = build_network(ops(arch, space))
    train_standalone(net, tr, arch, epochs, seed)
    return top1(net.eval(), va, arch.r)


def run(args) -> Result:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch
    from scipy.stats import kendalltau

    from hwnas.evaluate import subnet_accuracy
    from hwnas.ops import count_batch
    from hwnas.space import get_space
    from hwnas.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    space = get_space("small")
    data_key = (args.data, max(space.resolutions), args.seed, args.train_copies,
                args.val_copies)
    tr, va = datasets(*data_key)
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, n_random=args.n_random, distill=args.distill,
                      lr=args.lr, seed=args.seed)
    res = train(space, tr, cfg, tempfile.mkdtemp(), resume=False)
    train_s = time.perf_counter() - t0
    net = res.net.cpu().eval()
    extremes = subnet_accuracy(net, [space.largest(), space.smallest()], tr, va,
                               calib_batches=args.calib_batches, seed=args.seed)
    picks = spanning_subnets(space, args.n_subnets, args.seed + 1)
    super_acc = subnet_accuracy(net, picks, tr, va, calib_batches=args.calib_batches,
                                seed=args.seed)
    t1 = time.perf_counter()
    # seed j is shared by every subnet; the mean over seeds is each subnet's accuracy.
    # Largest first, so that the workers finish together.
    workers = max(1, min(args.workers, args.threads))
    jobs = [(space.to_dict(), arch.to_dict(), data_key, args.standalone_epochs,
             args.seed + j, max(1, args.threads // workers))
            for arch in reversed(picks) for j in range(args.standalone_seeds)]
    if workers == 1:
        accs = [standalone_top1(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) \
                as pool:
            accs = list(pool.map(standalone_top1, jobs))
    alone = np.asarray(accs).reshape(len(picks), args.standalone_seeds).mean(1)[::-1]
    standalone_s = time.perf_counter() - t1
    tau = float(kendalltau(super_acc, alone).statistic)
    rows = [{"subnet": space.arch_name(a)[:40], "MACs (M)": float(m) / 1e6,
             "supernet top-1": float(s), "stand-alone top-1": float(t)}
            for a, m, s, t in zip(picks, count_batch(picks, space)[:, 0], super_acc, alone)]
    ips = float(np.mean([h["images_per_s"] for h in res.history]))
    return Result(
        rows=rows,
        summary={"data": args.data, "train_images": len(tr), "val_images": len(va),
                 "epochs": args.epochs, "n_random": args.n_random,
                 "distill": args.distill, "lr": args.lr,
                 "standalone_epochs": args.standalone_epochs,
                 "standalone_seeds": args.standalone_seeds,
                 "threads": args.threads, "standalone_workers": workers,
                 "supernet_train_s": train_s,
                 "standalone_train_s": standalone_s, "train_images_per_s": ips,
                 "largest_top1": float(extremes[0]), "smallest_top1": float(extremes[1]),
                 "kendall_tau": tau, "total_s": time.perf_counter() - t0},
        targets={"largest top-1": (float(extremes[0]), 0.95, "ge"),
                 "smallest top-1": (float(extremes[1]), 0.90, "ge"),
                 "ranking Kendall tau (supernet vs stand-alone)": (tau, 0.6, "ge"),
                 "benchmark wall time, s": (time.perf_counter() - t0, 600.0, "le")})
