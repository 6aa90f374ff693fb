"""Benchmark `predictor`: every latency predictor side by side on held-out measured
subnets, few-shot transfer to a second device, and prediction throughput on one core.

Reads `<lut>/<device>.parquet` and `.subnets.parquet` (default `benchmarks/results/lut`,
measured on the development machine; measure your own with
`hwnas profile --device cpu-onnxruntime --space default --subnets 340 --out DIR`, and each
second device with `--subnets 120 --seed 7`), or pass --measure to profile here first.
cpu-tflite converts each op and subnet with litert-torch (`hwnas[tflite-convert]`): 449 ops
and 120 subnets took 20 min of conversion on this 2-core machine, kept in `--cache`.

For each second device the table also has a *ceiling* row: XGBoost fitted from scratch on
all of that device's subnets but one fold (5-fold cross-validation). It says how far the
device's whole-net latency can be predicted from its own LUT at all, which bounds what any
few-shot transfer can reach.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, Result


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu-onnxruntime")
    parser.add_argument("--second", default="cpu-tflite,cpu-torch",
                        help="comma-separated devices for few-shot transfer")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lut", default="benchmarks/results/lut")
    parser.add_argument("--measure", action="store_true",
                        help="profile both devices first (default space)")


def _throughput(fn, X, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(X)
        best = min(best, time.perf_counter() - t)
    return len(X) / best


def _ceiling(device: str, lut_dir: str, seed: int, folds: int = 5) -> dict[str, float]:
    """XGBoost from scratch on (folds-1)/folds of the device's subnets, scored on the rest
    fold by fold: the best a predictor from this device's own features does."""
    from hwnas.predictor import XGBoostPredictor, device_subnets, metrics

    table, _, _, archs, y = device_subnets(device, lut_dir, need_lut=True)
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    pred = np.empty_like(y)
    for f in range(folds):
        te, tr = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        model = XGBoostPredictor(table, seed=seed).fit([archs[i] for i in tr], y[tr])
        pred[te] = model.predict([archs[i] for i in te])
    return metrics(pred, y)


def run(args) -> Result:
    from hwnas import encoding
    from hwnas.predictor import (LutSum, XGBoostPredictor, fit_for_device, load_predictor,
                                 transfer_to_device)

    if args.measure:
        from hwnas.profile import profile

        profile(args.device, "default", subnets=340, out_dir=args.lut)
        for second in args.second.split(","):
            profile(second, "default", subnets=120, seed=7, out_dir=args.lut)
    out = RESULTS / "predictor"
    out.mkdir(parents=True, exist_ok=True)
    fit = fit_for_device(args.device, "xgboost", n_train=args.train, seed=args.seed,
                         lut_dir=args.lut, out=out / f"{args.device}.predictor.json")
    rows = [{"device": args.device, "predictor": k, **v} for k, v in fit.rows.items()]
    # the transfer reads the source predictor from the LUT folder's default place
    import shutil

    src = Path(args.lut) / f"{args.device}.predictor.json"
    shutil.copy(out / f"{args.device}.predictor.json", src)
    transfers = {}
    for second in args.second.split(","):
        tr = transfer_to_device(args.device, second, k=args.k, seed=args.seed,
                                lut_dir=args.lut, out=out / f"{second}.predictor.json")
        rows += [{"device": second, "predictor": k, **v} for k, v in tr.rows.items()]
        rows.append({"device": second, "predictor": "ceiling: xgboost on 4/5 of own subnets",
                     **_ceiling(second, args.lut, args.seed)})
        transfers[second] = (tr, next(v for k, v in tr.rows.items() if k.startswith("transfer")))

    # throughput on one core, batches of 10,000 encodings
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    xgb = load_predictor(src)
    space = xgb.space
    X = encoding.sample(space, 10_000, np.random.default_rng(0))
    lut_rate = _throughput(LutSum(xgb.table).predict, X)
    xgb_rate = _throughput(xgb.predict, X, repeats=3)
    assert isinstance(xgb, XGBoostPredictor)

    best = fit.rows["xgboost"]
    targets = {
        "xgboost held-out within ±10%": (best["within_10pct"], 0.99, "ge"),
        "xgboost held-out within ±5%": (best["within_5pct"], 0.90, "ge"),
        "xgboost held-out Kendall tau": (best["kendall_tau"], 0.90, "ge"),
    }
    for second, (_, m) in transfers.items():
        targets[f"transfer to {second}, k={args.k}: within ±10%"] = (m["within_10pct"], 0.95, "ge")
        targets[f"transfer to {second}, k={args.k}: Spearman rho"] = (m["spearman_rho"], 0.95, "ge")
    targets["LUT-sum archs/s (one core, batch 10k)"] = (lut_rate, 1e6, "ge")
    targets["XGBoost archs/s (one core, batch 10k)"] = (xgb_rate, 1e5, "ge")
    return Result(
        rows=rows,
        summary={"train": args.train, "held_out": best["n"], "k": args.k,
                 "lut_sum_archs_per_s": lut_rate, "xgboost_archs_per_s": xgb_rate,
                 "plots": [fit.files["plot"]] + [t.files["plot"] for t, _ in transfers.values()]},
        targets=targets)
