"""Benchmark `gpu`: everything this project runs on an NVIDIA GPU, in one go (<= 8 minutes
on one GPU), for the sessions that are lent one (the `device` tool), never in CI.

1. profile `cuda-torch` on the small space (every op, 30 subnets);
2. fit its XGBoost predictor on 20 of them and judge it on the other 10;
3. time the default space's largest subnet in fp32 with TF32 off (what hwnas measures)
   and on (PyTorch's cuDNN default), side by side;
4. exercise ONNX Runtime's CUDA provider, TensorRT (export, verify against ONNX Runtime,
   time the exported engine, per-layer profile) and LiteRT's GPU accelerator, each where
   installed, and "not installed: <what is missing>" otherwise;
5. with `--fewshot-lut DIR`, the default space's tables for the few-shot regimes on a GPU:
   `cuda-torch` (batch 1) and `cuda-torch-b64`, every op and `--fewshot-subnets` subnets
   each, into DIR (then `python -m benchmarks fewshot --lut DIR` anywhere).

Without a GPU it measures nothing and says so: one row, "not run: <why>". Nothing here
falls back to the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Result


def add_arguments(parser) -> None:
    parser.add_argument("--subnets", type=int, default=30)
    parser.add_argument("--out", default=None, help="keep tables and exports here")
    parser.add_argument("--fewshot-lut", default=None, help="also profile the default space "
                        "on cuda-torch and cuda-torch-b64 into this folder")
    parser.add_argument("--fewshot-subnets", type=int, default=80)


def _quick(device, runs: int = 20, rounds: int = 3):
    return dataclasses.replace(device, protocol=dataclasses.replace(
        device.protocol, runs=runs, rounds=rounds, max_retries=1))


def step(rows: list[dict[str, Any]], name: str, fn) -> Any:
    """Run one check; a failure becomes its row (with the error), never the end of the
    run, and never a success."""
    t = time.perf_counter()
    try:
        out = fn()
        rows.append({"check": name, "status": "ran", "s": time.perf_counter() - t,
                     **(out or {})})
        return out
    except Exception as exc:  # report, go on to the next check
        rows.append({"check": name, "status": f"failed: {type(exc).__name__}: {exc}"[:300],
                     "s": time.perf_counter() - t})
        return None


def run(args) -> Result:
    import torch

    from hwnas.backends.base import cuda_missing, tf32
    from hwnas.devices import check_usable, load_device

    problem = cuda_missing(0)
    if problem:
        return Result([{"check": "gpu", "status": f"not run: {problem}"}],
                      summary={"gpu": None}, notes=["nothing was measured: no GPU here"])
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-gpu-"))
    rows: list[dict[str, Any]] = []
    torch_dev = _quick(load_device("cuda-torch"))

    def profile_and_predict():
        from hwnas.predictor import fit_for_device
        from hwnas.profile import profile

        ops_r, sub_r = profile(torch_dev, "small", subnets=args.subnets, out_dir=out / "lut",
                               cache_dir=out / ".cache", progress=False)
        report = fit_for_device(torch_dev.name, "xgboost", space="small",
                                n_train=min(20, args.subnets - 1), lut_dir=out / "lut")
        m = report.rows["xgboost"]
        return {"ops": len(ops_r.table), "subnets": len(sub_r.table),
                "op_median_spread": float(np.median(ops_r.table["spread"])),
                "held_out": m["n"], "within_10pct": m["within_10pct"],
                "spearman": m["spearman_rho"], "mape": m["mape"]}

    step(rows, "cuda-torch: profile small space + predictor", profile_and_predict)

    def tf32_off_and_on():
        from hwnas.backends import get_backend
        from hwnas.space import get_space
        from hwnas.supernet import Supernet

        space = get_space("default")
        arch = space.largest()
        net = Supernet(space).subnet(arch)
        runner = get_backend(torch_dev, out / ".cache").prepare(
            net, (8, 3, arch.r, arch.r), "largest-b8")
        times = {}
        for allowed in (False, True, False):  # off, on, off again: drift shows
            with tf32(allowed):
                runner.time(10)
                times.setdefault(allowed, []).append(float(np.median(runner.time(50))))
        off, on = min(times[False]), times[True][0]
        return {"fp32_ms (tf32 off)": off * 1e3, "tf32_ms": on * 1e3,
                "tf32 speed-up": off / on, "batch": 8}

    step(rows, "cuda-torch: fp32 with TF32 off vs on", tf32_off_and_on)

    def other_runtime(name: str, device):
        def check():
            missing = check_usable(device)
            if missing:
                return {"status_detail": f"not installed: {missing}"}
            from hwnas.export import export

            formats = {"onnxruntime": ["onnx"], "tensorrt": ["onnx", "tensorrt"],
                       "tflite": ["tflite"]}[device.backend]
            from hwnas.space import get_space

            res = export(get_space("small").largest(), out / f"export-{name}", formats,
                         space="small", progress=False)
            from hwnas.backends import get_backend
            from hwnas.profile import time_runner

            backend = get_backend(device, out / ".cache" / name)
            fmt = backend.file_format
            runner = backend.load(res.files[fmt], tuple(res.manifest["input_shape"]))
            stats = time_runner(runner, device.protocol)
            detail = {"measured_ms": stats["latency_ms"], "spread": stats["spread"],
                      "checks": {c["variant"]: c["ok"] for c in res.manifest["checks"]}}
            if "layer_times" in runner.info:
                detail["slowest_layers"] = runner.info["layer_times"](10)[:5]
            runner.close()
            return detail
        return check

    tflite_gpu = dataclasses.replace(load_device("cpu-tflite"), name="cuda-tflite",
                                     hardware="cuda")
    for name, dev in (("cuda-onnxruntime", load_device("cuda-onnxruntime")),
                      ("cuda-tensorrt", load_device("cuda-tensorrt")),
                      ("cuda-tflite (LiteRT GPU)", tflite_gpu)):
        step(rows, name, other_runtime(name, _quick(dev)))
    if args.fewshot_lut:
        def fewshot_tables(name: str):
            def profile_default():
                from hwnas.profile import profile

                ops_r, sub_r = profile(_quick(load_device(name), rounds=3), "default",
                                       subnets=args.fewshot_subnets,
                                       out_dir=args.fewshot_lut, progress=False)
                return {"ops": len(ops_r.table), "subnets": len(sub_r.table),
                        "subnet_ms_range": [float(sub_r.table["latency_ms"].min()),
                                            float(sub_r.table["latency_ms"].max())]}
            return profile_default

        for name in ("cuda-torch", "cuda-torch-b64"):
            step(rows, f"{name}: default-space tables for fewshot", fewshot_tables(name))
    gpu = torch.cuda.get_device_name(0)
    return Result(rows, summary={"gpu": gpu, "out": str(out)},
                  notes=[json.dumps({r["check"]: r["status"] for r in rows})])
