"""Benchmark `train`: the supernet on the embedded digits data and the small space.

Reports top-1 of the largest and smallest subnets (BN recalibrated) and the ranking
benchmark: Kendall tau between the supernet's accuracy of >= 10 subnets spanning the MAC
range and the accuracy of the same subnets trained stand-alone from scratch, plus
training throughput. Everything is measured in this run.

The default data is digits-hard with 2 distorted copies of each training image and 8 of
each validation image (2,876 / 2,872 images). On plain digits every subnet scores 98-99%,
1-2 validation images apart, so no ranking can be measured; with one copy of 359
validation images one image is 0.28% and the ranking is noise (tau 0.05 in a 20-epoch
run). Stand-alone runs share one seed (the same batch order for every subnet), so their
differences come from the architectures rather than from the draw; one seed still leaves
them noisy, and `--standalone-seeds 3` averages three (about 18 minutes here).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--standalone-epochs", type=int, default=10)
    parser.add_argument("--n-subnets", type=int, default=10)
    parser.add_argument("--standalone-seeds", type=int, default=1,
                        help="stand-alone runs per subnet, averaged (each ~30 s here)")
    parser.add_argument("--calib-batches", type=int, default=8,
                        help="training batches (of 128) to recalibrate BN per subnet")
    parser.add_argument("--threads", type=int, default=2)
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


def run(args) -> Result:
    import torch
    from scipy.stats import kendalltau

    from hwnas.data import digits_hard, load_dataset
    from hwnas.evaluate import subnet_accuracy, top1
    from hwnas.ops import build_network, count_batch, ops
    from hwnas.space import get_space
    from hwnas.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    space = get_space("small")
    if args.data == "digits-hard":
        tr, va = digits_hard(max(space.resolutions), seed=args.seed,
                             train_copies=args.train_copies, val_copies=args.val_copies)
    else:
        tr, va = load_dataset(args.data, max(space.resolutions), seed=args.seed)
    t0 = time.perf_counter()
    res = train(space, tr, TrainConfig(epochs=args.epochs, seed=args.seed),
                tempfile.mkdtemp(), resume=False)
    train_s = time.perf_counter() - t0
    net = res.net.cpu().eval()
    extremes = subnet_accuracy(net, [space.largest(), space.smallest()], tr, va,
                               calib_batches=args.calib_batches, seed=args.seed)
    # subnets spanning the MAC range: quantiles of a sample sorted by MACs
    pool = space.sample(400, seed=args.seed + 1)
    macs = count_batch(pool, space)[:, 0]
    order = np.argsort(macs)
    picks = [pool[order[int(q)]] for q in np.linspace(0, len(pool) - 1, args.n_subnets)]
    super_acc = subnet_accuracy(net, picks, tr, va, calib_batches=args.calib_batches,
                                seed=args.seed)
    t1 = time.perf_counter()
    alone = []  # mean over stand-alone seeds; seed j is shared by every subnet
    for arch in picks:
        accs = []
        for j in range(args.standalone_seeds):
            sub = build_network(ops(arch, space))  # train_standalone initialises it
            train_standalone(sub, tr, arch, args.standalone_epochs, args.seed + j)
            accs.append(top1(sub.eval(), va, arch.r))
        alone.append(float(np.mean(accs)))
    standalone_s = time.perf_counter() - t1
    tau = float(kendalltau(super_acc, alone).statistic)
    rows = [{"subnet": space.arch_name(a)[:40], "MACs (M)": float(m) / 1e6,
             "supernet top-1": float(s), "stand-alone top-1": float(t)}
            for a, m, s, t in zip(picks, count_batch(picks, space)[:, 0], super_acc, alone)]
    ips = float(np.mean([h["images_per_s"] for h in res.history]))
    return Result(
        rows=rows,
        summary={"data": args.data, "train_images": len(tr), "val_images": len(va),
                 "epochs": args.epochs, "standalone_epochs": args.standalone_epochs,
                 "standalone_seeds": args.standalone_seeds,
                 "threads": args.threads, "supernet_train_s": train_s,
                 "standalone_train_s": standalone_s, "train_images_per_s": ips,
                 "largest_top1": float(extremes[0]), "smallest_top1": float(extremes[1]),
                 "kendall_tau": tau, "total_s": time.perf_counter() - t0},
        targets={"largest top-1": (float(extremes[0]), 0.95, "ge"),
                 "smallest top-1": (float(extremes[1]), 0.90, "ge"),
                 "ranking Kendall tau (supernet vs stand-alone)": (tau, 0.6, "ge"),
                 "benchmark wall time, s": (time.perf_counter() - t0, 600.0, "le")})
