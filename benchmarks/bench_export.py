"""Benchmark `export`: export time per format, and predicted vs measured latency of
exported subnets on the CPU devices.

Default space, 20 random subnets (seed 21, not among the profiled ones), each exported to
ONNX and TFLite (fp32), verified, then measured with the profiling protocol: the ONNX file
on cpu-onnxruntime, the PyTorch module on cpu-torch, the TFLite file on cpu-tflite. The
prediction is each device's saved predictor in --lut, else its LUT sum; a device without
either (cpu-tflite unless you profiled it) is reported as measured only.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--space", default="default")
    parser.add_argument("--lut", default="benchmarks/results/lut")
    parser.add_argument("--devices", default="cpu-onnxruntime,cpu-torch,cpu-tflite")
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", default=None)


def _ensure_predictors(devices, lut: str) -> None:
    """Fit an XGBoost predictor for each device that has measured subnets but no saved
    predictor (as a user would before exporting), holding 20 subnets out."""
    import pandas as pd

    from hwnas.lut import table_paths
    from hwnas.predictor import default_predictor_path, fit_for_device

    for d in devices:
        _, subs = table_paths(d.name, lut)
        if subs.exists() and not default_predictor_path(d.name, lut).exists():
            n = len(pd.read_parquet(subs))
            fit_for_device(d.name, "xgboost", n_train=min(200, n - 20), lut_dir=lut)


def run(args) -> Result:
    import dataclasses

    from hwnas.devices import load_device
    from hwnas.export import export
    from hwnas.space import get_space

    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)  # pinned to one core
    space = get_space(args.space)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-export-"))
    archs = space.sample(args.n, seed=args.seed)
    core = sorted(os.sched_getaffinity(0))[0] if hasattr(os, "sched_getaffinity") else None
    devices = []
    for name in args.devices.split(","):
        d = load_device(name)
        if d.cpu_affinity is None and core is not None:
            d = dataclasses.replace(d, cpu_affinity=(core,))
        devices.append(d)
    formats = args.formats.split(",")
    _ensure_predictors(devices, args.lut)
    rows, per_device = [], {d.name: [] for d in devices}
    stage_s = {f: [] for f in formats}
    for i, arch in enumerate(archs):
        t = time.perf_counter()
        res = export(arch, out / f"{i:02d}", formats, space=space, devices=devices,
                     lut_dir=args.lut, progress=False)
        m = res.manifest
        row = {"i": i, "arch": m["name"][:28], "total_s": time.perf_counter() - t}
        for f in m["files"]:
            stage_s[f["format"]].append(f["export_s"])
            row[f"{f['format']} export_s"] = f["export_s"]
        for c in m["checks"]:
            row[f"diff {c['variant']}"] = c["max_abs_diff"]
        for lat in m["latency"]:
            per_device[lat["device"]].append(lat)
            row[f"{lat['device']} ms"] = lat["measured_ms"]
            if lat["measured/predicted"] is not None:
                row[f"{lat['device']} ratio"] = lat["measured/predicted"]
        rows.append(row)
    summary = {"space": space.name, "n": len(archs), "out": str(out),
               "export_s_median": {f: float(np.median(v)) for f, v in stage_s.items() if v}}
    notes = []
    for name, lats in per_device.items():
        ratios = np.array([x["measured/predicted"] for x in lats
                           if x["measured/predicted"] is not None])
        if len(ratios):
            summary[f"{name} within ±10%"] = float(np.mean(np.abs(ratios - 1) <= 0.10))
            summary[f"{name} within ±5%"] = float(np.mean(np.abs(ratios - 1) <= 0.05))
            summary[f"{name} median measured/predicted"] = float(np.median(ratios))
            summary[f"{name} predictor"] = lats[0]["predictor"]
        else:
            notes.append(f"{name}: measured only ({lats[0]['predictor'] if lats else 'no rows'})")
    return Result(rows=rows, summary=summary, notes=notes)
