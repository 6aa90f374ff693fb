"""Benchmark `fewshot`: latency prediction for a device from k measured subnets, in every
latency regime measured here, beside the trivial baselines.

Regimes (tables under `--lut`, default `benchmarks/results/lut`):

* cpu-torch, batch 1 (PyTorch eager: dispatch-bound, per-op overhead);
* cpu-tflite, batch 1 (LiteRT/XNNPACK: 7x7 depthwise convolutions 4-14x slower than ONNX
  Runtime's, so MACs mislead);
* cpu-onnxruntime-b32, batch 32 (compute-bound);
* cpu-onnxruntime, batch 1, *without* its LUT (structure alone);
* cuda-torch (batch 1) and cuda-torch-b64, where their tables exist (a GPU session).

For each regime and each k in `--ks`, `--draws` seeded draws of k training subnets (the rest
held out): hwnas's few-shot predictor without the LUT ("structure"), with the device's LUT
("+LUT", where it has one) and with another device's predictor as a prior ("+prior"), and
the baselines MACs-linear, block-count-linear and LUT-linear. Every figure is the mean over
the draws of the share of held-out subnets within ±10%, of Spearman's rho and of the MAPE;
`ceiling` is the same predictor fitted on 5-fold cross-validated splits of all the device's
subnets.

Measure the tables with (the default space; `--batch 32` for the b32 regime):
  hwnas profile --device cpu-torch --space default --subnets 150 --out benchmarks/results/lut
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.harness import Result

# name, device (tables), use its LUT for the +LUT row, a prior device
REGIMES = [
    ("cpu-torch b1", "cpu-torch", True, "cpu-onnxruntime"),
    ("cpu-tflite b1", "cpu-tflite", True, "cpu-onnxruntime"),
    ("cpu-onnxruntime b32", "cpu-onnxruntime-b32", True, "cpu-onnxruntime"),
    ("cpu-onnxruntime b1 (no LUT)", "cpu-onnxruntime", False, None),
    ("cuda-torch b1", "cuda-torch", True, "cpu-onnxruntime"),
    ("cuda-torch b64", "cuda-torch-b64", True, "cpu-onnxruntime"),
]
TARGET_K = 20


def add_arguments(parser) -> None:
    parser.add_argument("--lut", default="benchmarks/results/lut")
    parser.add_argument("--ks", default="10,20,50")
    parser.add_argument("--draws", type=int, default=10)


def _scores(pred, y) -> tuple[float, float, float]:
    from hwnas.predictor import metrics

    m = metrics(pred, y)
    return m["within_10pct"], m["spearman_rho"], m["mape"]


def _methods(table, space, prior):
    """name -> fit(train archs, y) -> predict(archs): hwnas's predictor and the baselines."""
    from hwnas.fewshot import FewShotPredictor, baselines

    def fewshot(**kw):
        def fit(A, y):
            p = FewShotPredictor(table, space, **kw).fit(A, y)
            return p.predict
        return fit

    def baseline(name, with_lut):
        def fit(A, y):
            p = FewShotPredictor(table, space, use_lut=with_lut)
            return lambda B: baselines(p, A, y, B)[name]
        return fit

    out = {"hwnas structure": fewshot(use_lut=False)}
    if table is not None:
        out["hwnas +LUT"] = fewshot(use_lut=True)
    if prior is not None:
        out["hwnas +LUT +prior" if table is not None else "hwnas +prior"] = fewshot(
            use_lut=table is not None, priors={"prior": prior})
    out["macs-linear"] = baseline("macs-linear", False)
    out["blocks-linear"] = baseline("blocks-linear", False)
    if table is not None:
        out["lut-linear"] = baseline("lut-linear", True)
    return out


def _ceiling(fit, archs, y, seed: int = 0) -> tuple[float, float]:
    pred = np.empty(len(y))
    for idx in np.array_split(np.random.default_rng(seed).permutation(len(y)), 5):
        keep = np.ones(len(y), bool)
        keep[idx] = False
        pred[idx] = fit([archs[i] for i in np.flatnonzero(keep)], y[keep])(
            [archs[i] for i in idx])
    return _scores(pred, y)


def run(args) -> Result:
    from hwnas.predictor import device_subnets
    from hwnas.lut import table_paths
    from hwnas.predictor import default_predictor_path, load_predictor, split_subnets

    ks = [int(k) for k in args.ks.split(",")]
    rows, details, targets, notes = [], {}, {}, []
    losses = 0
    for regime, device, use_lut, prior_name in REGIMES:
        if not table_paths(device, args.lut)[1].exists():
            notes.append(f"{regime}: no measured subnets of {device} in {args.lut} (not "
                         f"measured here{'; needs a GPU' if 'cuda' in device else ''})")
            continue
        table, space, subs, archs, y = device_subnets(device, args.lut)
        table = table if use_lut else None
        prior = None
        if prior_name and default_predictor_path(prior_name, args.lut).exists():
            prior = load_predictor(default_predictor_path(prior_name, args.lut), space=space)
        methods = _methods(table, space, prior)
        keys = list(subs["key"])
        for k in ks:
            if k >= len(keys):
                notes.append(f"{regime}: k={k} needs more than {len(keys)} subnets")
                continue
            per = {name: [] for name in methods}
            for draw in range(args.draws):
                tr, te = split_subnets(keys, k, seed=draw)
                A, B = [archs[i] for i in tr], [archs[i] for i in te]
                for name, fit in methods.items():
                    per[name].append(_scores(fit(A, y[tr])(B), y[te]))
            for name, fit in methods.items():
                w10, rho, mape = np.mean(per[name], axis=0)
                row = {"regime": regime, "k": k, "predictor": name, "within ±10%": float(w10),
                       "spearman": float(rho), "mape": float(mape), "n": len(keys)}
                if k == TARGET_K:
                    cw, cr, _ = _ceiling(fit, archs, y)
                    row.update({"ceiling ±10%": cw, "ceiling rho": cr})
                rows.append(row)
            details[f"{regime} k={k}"] = {n: [list(map(float, s)) for s in v]
                                          for n, v in per.items()}
            means = {n: np.mean(per[n], axis=0) for n in per}
            hwnas_rows = {n: m for n, m in means.items() if n.startswith("hwnas")}
            baselines = {n: m for n, m in means.items() if not n.startswith("hwnas")}
            base = max(baselines, key=lambda n: baselines[n][0])  # best within ±10%
            best_base = baselines[base][0]
            main = "hwnas +LUT" if "hwnas +LUT" in hwnas_rows else "hwnas structure"
            if hwnas_rows[main][0] < best_base:
                losses += 1
                base_mape = min(m[2] for m in baselines.values())
                diff = np.array(per[main])[:, 0] - np.array(per[base])[:, 0]
                se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
                notes.append(f"{regime} k={k}: {main} {hwnas_rows[main][0]:.3f} within ±10%, "
                             f"below the best baseline's {best_base:.3f} (held-out MAPE "
                             f"{hwnas_rows[main][2]:.4f} against the baselines' best "
                             f"{base_mape:.4f}); paired over the draws against {base}: "
                             f"{diff.mean():+.3f} ± {se:.3f} (SE), "
                             f"{'beyond' if abs(diff.mean()) > 2 * se else 'within'} 2 SE")
            if k == TARGET_K:
                few = "hwnas structure" if table is None else max(
                    (n for n in hwnas_rows), key=lambda n: hwnas_rows[n][0])
                targets[f"{regime}: few-shot within ±10% (k=20)"] = (
                    float(hwnas_rows[few][0]), 0.90, "ge")
                targets[f"{regime}: few-shot Spearman (k=20)"] = (
                    float(hwnas_rows[few][1]), 0.90, "ge")
                if table is not None:
                    targets[f"{regime}: with its LUT, within ±10% (k=20)"] = (
                        float(hwnas_rows["hwnas +LUT"][0]), 0.95, "ge")
    targets["regimes x k where hwnas lost to a baseline"] = (float(losses), 0.0, "le")
    return Result(rows, {"lut": str(Path(args.lut)), "draws": args.draws, "ks": ks},
                  targets, notes, details)
