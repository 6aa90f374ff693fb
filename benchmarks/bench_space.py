"""Benchmark `space`: how fast archs are sampled, encoded, decoded and counted, on one
core, and how long cutting the largest subnet out of the supernet takes."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="default")
    parser.add_argument("--n", type=int, default=20000, help="archs per measurement")


def _rate(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def run(args) -> Result:
    import torch

    from hwnas.ops import count, count_batch, unique_ops
    from hwnas.space import get_space
    from hwnas.supernet import Supernet

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    sp = get_space(args.space)
    n = args.n
    archs = sp.sample(n, seed=0)
    X = np.stack([sp.encode(a) for a in archs])
    rows = [
        {"what": "sample", "archs_per_s": _rate(lambda: sp.sample(n, seed=1), n)},
        {"what": "encode", "archs_per_s": _rate(lambda: [sp.encode(a) for a in archs], n)},
        {"what": "decode", "archs_per_s": _rate(lambda: [sp.decode(x) for x in X], n)},
        {"what": "count (one arch per call)",
         "archs_per_s": _rate(lambda: [count(a, sp) for a in archs[:2000]], 2000)},
        {"what": "count_batch (archs)", "archs_per_s": _rate(lambda: count_batch(archs, sp), n)},
        {"what": "count_batch (encodings)",
         "archs_per_s": _rate(lambda: count_batch(X, sp), n)},
    ]
    torch.manual_seed(0)
    net = Supernet(sp).eval()
    largest = sp.largest()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        net.subnet(largest)
        times.append(time.perf_counter() - t)
    subnet_ms = statistics.median(times) * 1e3
    rows.append({"what": "subnet(largest)", "archs_per_s": 1e3 / subnet_ms, "ms": subnet_ms})
    counting = rows[4]["archs_per_s"]
    return Result(
        rows=rows,
        summary={"space": sp.name, "unique_ops": len(unique_ops(sp)), "size": str(sp.size()),
                 "subnet_largest_ms": subnet_ms, "cores_used": 1},
        targets={"count_batch archs/s (one core)": (counting, 20000.0, "ge")},
    )
