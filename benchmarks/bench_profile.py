"""Benchmark `profile`: a full LUT of a space on a device (default: cpu-onnxruntime, 1
thread, the default space at every resolution), twice back to back.

Reports the wall time of the first full build split into model building/conversion and
timing, the share of the timing phase spent inside timed calls, and the repeatability of
the two tables: |latency_1 - latency_2| / latency_1 over all ops (median and p95).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu-onnxruntime")
    parser.add_argument("--space", default="default")
    parser.add_argument("--resolutions", default=None, help="comma-separated (default: all)")
    parser.add_argument("--out", default=None)


def run(args) -> Result:
    from hwnas.devices import load_device
    from hwnas.profile import profile
    from hwnas.space import get_space

    space = get_space(args.space)
    dev = load_device(args.device)
    if dev.cpu_affinity is None and hasattr(os, "sched_getaffinity"):
        dev = dataclasses.replace(dev, cpu_affinity=(sorted(os.sched_getaffinity(0))[0],))
    res = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    out = Path(args.out or tempfile.mkdtemp())
    cache = out / "cache"
    rows, tables = [], []
    for i in (1, 2):
        t = time.perf_counter()
        r, _ = profile(dev, space, res, out_dir=out / f"build{i}", cache_dir=cache)
        wall = time.perf_counter() - t
        tables.append(r.table.set_index("key")["latency_ms"])
        rows.append({"build": i, "ops": len(r.table), "wall_s": wall, "build_s": r.build_s,
                     "timing_s": r.timing_s, "timed_fraction": r.timed_fraction,
                     "median_spread": float(r.table["spread"].median()),
                     "re-measured rows": int((r.table["attempts"] > 1).sum()),
                     "cache": "cold (exports ONNX)" if i == 1 else "warm (ONNX reused)"})
    a, b = tables[0], tables[1].reindex(tables[0].index)
    rel = (np.abs(a - b) / a).to_numpy()
    first = rows[0]
    return Result(
        rows=rows,
        summary={"device": dev.name, "space": space.name, "cpu_affinity": dev.cpu_affinity,
                 "ops": first["ops"], "repeat_median_rel_diff": float(np.median(rel)),
                 "repeat_p95_rel_diff": float(np.percentile(rel, 95))},
        targets={
            "full LUT wall time, s": (first["wall_s"], 600.0, "le"),
            "timed calls / timing phase (build 1)": (first["timed_fraction"], 0.7, "ge"),
            "timed calls / timing phase (build 2)": (rows[1]["timed_fraction"], 0.7, "ge"),
            "repeatability median |d|/latency": (float(np.median(rel)), 0.03, "le"),
            "repeatability p95 |d|/latency": (float(np.percentile(rel, 95)), 0.10, "le"),
        })
