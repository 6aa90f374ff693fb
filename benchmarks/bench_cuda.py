"""Benchmark `cuda`: profile the CUDA devices (torch with CUDA events, ONNX Runtime's CUDA
EP, TensorRT) where this machine has them, and compare the LUT sum with end-to-end
measured subnets. Devices that cannot run here are reported with what they miss."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import Result

DEVICES = ("cuda-torch", "cuda-onnxruntime", "cuda-tensorrt")


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="default")
    parser.add_argument("--resolutions", default="224", help="comma-separated")
    parser.add_argument("--subnets", type=int, default=30)
    parser.add_argument("--out", default=None, help="keep the tables here")


def run(args) -> Result:
    from hwnas.devices import check_usable, load_device
    from hwnas.lut import LatencyTable
    from hwnas.profile import profile
    from hwnas.space import get_space

    space = get_space(args.space)
    res = [int(r) for r in args.resolutions.split(",")]
    out = Path(args.out or tempfile.mkdtemp())
    rows, notes = [], []
    for name in DEVICES:
        dev = load_device(name)
        missing = check_usable(dev)
        if missing:
            rows.append({"device": name, "status": f"not usable: {missing}"})
            continue
        ops_r, sub_r = profile(dev, space, res, args.subnets, out_dir=out,
                               cache_dir=out / ".cache" / name, progress=False)
        lut = LatencyTable.load(ops_r.path, space)
        subs = sub_r.table
        archs = [space.arch(json.loads(a)) for a in subs["arch"]]
        pred = lut.predict(archs)
        meas = subs["latency_ms"].to_numpy()
        ratio = pred / meas
        rows.append({
            "device": name, "status": "measured", "ops": len(ops_r.table),
            "build_s": ops_r.build_s, "timing_s": ops_r.timing_s,
            "timed_fraction": ops_r.timed_fraction,
            "op_median_ms": float(np.median(ops_r.table["latency_ms"])),
            "op_median_spread": float(np.median(ops_r.table["spread"])),
            "subnets": len(subs), "subnet_min_ms": float(meas.min()),
            "subnet_max_ms": float(meas.max()),
            "lut_sum/measured (median)": float(np.median(ratio)),
            "lut_sum MAPE": float(np.mean(np.abs(ratio - 1))),
        })
        notes.append(f"{name}: fingerprint {json.dumps(lut.fingerprint)}")
    return Result(rows=rows, summary={"space": space.name, "resolutions": res,
                                      "tables": str(out)}, notes=notes)
