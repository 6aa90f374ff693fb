"""Benchmark `tflite_lut`: a full TFLite lookup table of a space, with many ops converted
per litert-torch conversion (branches of one graph, split into a file each), from a cold
conversion cache.

Reports the wall time of the whole table (conversion and timing), the conversion time
per op against converting ops one at a time (measured in the same run on `--single` ops;
the one-at-a-time table time is that per-op figure times the op count), and whether an op
split out of a many-op conversion times as the same op converted alone (median ratio over
`--compare` ops, timed interleaved). The table goes to `--out`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu-tflite")
    parser.add_argument("--space", default="default")
    parser.add_argument("--single", type=int, default=6, help="ops converted one per file")
    parser.add_argument("--compare", type=int, default=12, help="ops timed both ways")
    parser.add_argument("--out", default=None)


def run(args) -> Result:
    from hwnas.backends import get_backend
    from hwnas.backends.base import sample_input
    from hwnas.convert import to_tflite
    from hwnas.devices import load_device
    from hwnas.ops import unique_ops
    from hwnas.profile import pinned, profile, settle
    from hwnas.space import get_space

    out = Path(args.out or tempfile.mkdtemp())
    os.environ["HWNAS_CACHE"] = str(out / "cache")  # cold: nothing converted yet
    dev, space = load_device(args.device), get_space(args.space)
    t = time.perf_counter()
    res, _ = profile(dev, space, out_dir=out / "lut")
    wall = time.perf_counter() - t
    n_ops = len(res.table)

    ops = unique_ops(space)
    picks = [ops[i] for i in np.linspace(0, len(ops) - 1, args.single).astype(int)]
    t = time.perf_counter()
    for i, op in enumerate(picks):
        to_tflite(op.build(), sample_input(op.input_shape), out / "single" / f"{i}.tflite")
    per_single = (time.perf_counter() - t) / len(picks)

    backend = get_backend(dev, out / "lut" / ".cache")
    compare = [ops[i] for i in np.linspace(0, len(ops) - 1, args.compare).astype(int)]
    many = backend.prepare_many([(o.build, o.input_shape, f"{o.key}|{dev.precision}")
                                 for o in compare])
    ratios, same_ops = [], []
    with pinned(dev.cpu_affinity, dev.threads):
        for op, split in zip(compare, many):
            alone = backend.prepare(op.build(), op.input_shape, f"{op.key}|alone")
            settle(alone, dev.protocol)
            a, m = [], []
            for _ in range(5):  # interleaved
                a.append(np.median(alone.time(100)))
                m.append(np.median(split.time(100)))
            ratios.append(float(np.median(m) / np.median(a)))
            same_ops.append(split.info["ops"] == alone.info["ops"])
    rows = [{"what": "full LUT (cold cache)", "ops": n_ops, "wall_s": wall,
             "build_s": res.build_s, "timing_s": res.timing_s},
            {"what": "one op per conversion", "ops": len(picks), "wall_s": per_single * n_ops,
             "build_s": per_single * n_ops, "timing_s": None,
             "note": f"{per_single:.2f} s per op, measured on {len(picks)} ops, times {n_ops}"},
            {"what": "split / alone timing (median)", "ops": len(compare),
             "wall_s": None, "build_s": None, "timing_s": None,
             "note": f"{np.median(ratios):.3f}; same ops in {sum(same_ops)}/{len(same_ops)}"}]
    return Result(
        rows=rows,
        summary={"device": dev.name, "space": space.name, "ops": n_ops,
                 "conversion_s_per_op_batched": res.build_s / n_ops,
                 "conversion_s_per_op_single": per_single,
                 "split_vs_alone_ratio_median": float(np.median(ratios)),
                 "split_vs_alone_ratios": ratios, "same_ops": sum(same_ops)},
        targets={"full TFLite LUT of the space, cold, s": (wall, 300.0, "le"),
                 "split / alone timing, median": (float(np.median(ratios)), 1.05, "le"),
                 "alone / split timing, median": (1 / float(np.median(ratios)), 1.05, "le"),
                 "split ops equal alone ops": (sum(same_ops), len(same_ops), "ge")})
