"""Benchmark `search`: random search, NSGA-II, MoGA and NAT side by side on the default
space with the CPU ONNX Runtime latency predictor, at equal numbers of accuracy
evaluations over several seeds; predictor-side evaluation speed; then the best arch per
budget measured on the device against its predicted latency.

The accuracy objective. No default-space supernet can be trained to a meaningful accuracy
on this 2-core CPU machine with the embedded data (digits saturates at ~99% for every
subnet), so by default accuracy comes from a fixed *landscape*: ImageNet-like top-1 that
rises concavely with log MACs (72% -> 80% over the space), plus a fixed random effect per
(block slot, kernel, expand) choice and per resolution, plus a per-arch deterministic
jitter standing in for supernet evaluation noise. It is a benchmark function for the
*search*, stated as such in the result; pass --checkpoint to use a trained supernet instead.
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from benchmarks.harness import Result

ALGOS = ("random", "nsga2", "moga", "nat")


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu-onnxruntime")
    parser.add_argument("--lut", default="benchmarks/results/lut")
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="0.25,0.5,0.75",
                        help="budgets as fractions of the smallest..largest predicted range")
    parser.add_argument("--checkpoint", default=None, help="default-space supernet to use "
                        "for accuracy instead of the landscape")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-measure", action="store_true")
    parser.add_argument("--no-real", action="store_true", help="skip the second part: the "
                        "small space with a real supernet's accuracy")
    parser.add_argument("--real-data", default="digits-hard")
    parser.add_argument("--real-epochs", type=int, default=6)
    parser.add_argument("--real-evaluations", type=int, default=80)
    parser.add_argument("--verify", default="auto", choices=("auto", "on", "off"),
                        help="measure near-budget archs and the best per budget on the device")
    parser.add_argument("--verify-limit", type=int, default=10,
                        help="archs measured during each search at most")
    parser.add_argument("--simulate-faster-table", type=float, default=None, metavar="F",
                        help="search with copies of the tables whose every latency and probe "
                             "is divided by F: what a table recorded on an F-times faster "
                             "machine of the same name gives")


class Landscape:
    """The benchmark's accuracy function (see the module docstring)."""

    def __init__(self, space, seed: int = 1234) -> None:
        from hwnas.ops import count_batch

        self.space, self.count_batch = space, count_batch
        rng = np.random.default_rng(seed)
        self.block = rng.normal(0, 0.0025, size=(space.n_blocks, len(space.kernels),
                                                 len(space.expands)))
        self.res = rng.normal(0, 0.003, size=len(space.resolutions))
        ends = count_batch([space.smallest(), space.largest()], space)[:, 0].astype(float)
        self.lo, self.hi = np.log(ends[0]), np.log(ends[1])

    def __call__(self, archs) -> np.ndarray:
        sp = self.space
        macs = self.count_batch(archs, sp)[:, 0].astype(float)
        t = np.clip((np.log(macs) - self.lo) / (self.hi - self.lo), 0, 1)
        out = 0.72 + 0.08 * np.sqrt(t)
        ki = {k: i for i, k in enumerate(sp.kernels)}
        ei = {e: i for i, e in enumerate(sp.expands)}
        for n, a in enumerate(archs):
            effect = self.res[sp.resolutions.index(a.r)]
            for s, d in enumerate(a.d):
                for b in range(d):
                    j = s * sp.max_depth + b
                    effect += self.block[j, ki[a.k[j]], ei[a.e[j]]]
            jitter = (zlib.crc32(a.key.encode()) % 10007) / 10007 - 0.5
            out[n] += effect + 0.002 * jitter
        return out


def compare_algorithms(space, device, pred, accuracy, budgets, evaluations, seeds, out,
                       label, verify="off", verify_limit=10, lut_dir="lut"):
    """Every algorithm for every seed at equal accuracy evaluations; hypervolume of each
    run's first ``evaluations`` accuracy evaluations, normalised over all runs' points.
    ``lut_dir``: the predictor's tables, whose subnets clock the verification."""
    from hwnas.search import (SearchConfig, archive_objectives, hypervolume, non_dominated,
                              parse_objectives, scored_rows, search)

    objectives = ("acc", f"latency:{device}")
    runs = {}
    for seed in range(seeds):
        for algo in ALGOS:
            cfg = SearchConfig(space=space.name, objectives=objectives, budgets_ms=budgets,
                               algorithm=algo, evaluations=evaluations,
                               pop_size=min(40, evaluations // 4), seed=seed,
                               weights={f"latency:{device}": 2.0},
                               nat_initial=max(8, evaluations // 5),
                               nat_per_iteration=max(4, evaluations // 15),
                               nat_generations=30, verify=verify, verify_limit=verify_limit,
                               lut_dir=str(lut_dir))
            t = time.perf_counter()
            res = search(cfg, out / f"{algo}-{seed}", accuracy=accuracy,
                         predictors={device: pred}, progress=False, plots=(seed == 0))
            runs[algo, seed] = (res, time.perf_counter() - t)
    objs = parse_objectives(objectives)
    allF = np.vstack([archive_objectives(scored_rows(r.archive, True), objs)
                      for r, _ in runs.values()])
    lower, upper = allF.min(0), allF.max(0)
    rows, hv = [], {}
    for (algo, seed), (res, secs) in runs.items():
        sc = scored_rows(res.archive, True)
        sc = sc[sc["count"] <= evaluations]
        F = archive_objectives(sc, objs)
        hv[algo, seed] = hypervolume(F, lower, upper)
        row = {"part": label, "algorithm": algo, "seed": seed,
               "acc evals": int(res.evaluations), "norm. HV": hv[algo, seed],
               "front": len(non_dominated(F)), "s": secs}
        for b in budgets:
            best = res.best.get(b)
            row[f"acc ≤b{budgets.index(b) + 1}"] = float(best["acc"]) if best is not None \
                else float("nan")
        row["NAT surrogate tau"] = res.nat_log[-1]["cv_kendall_tau"] if res.nat_log else ""
        if res.verify:
            row["measured on device"] = res.verify["measurements"]
            row["to today"] = res.verify["to_today"]
            row["best over budget (measured)"] = sum(
                1 for b, r in res.best.items()
                if not r.get(f"latency:{device}:measured") or r[f"latency:{device}"] > b)
        rows.append(row)
    return runs, rows, hv


class Memo:
    """An accuracy function that remembers (runs of several algorithms share it)."""

    def __init__(self, fn) -> None:
        self.fn, self.cache = fn, {}

    def __call__(self, archs):
        todo = [a for a in dict.fromkeys(archs) if a.key not in self.cache]
        if todo:
            self.cache.update({a.key: float(v) for a, v in zip(todo, self.fn(todo))})
        return np.array([self.cache[a.key] for a in archs])


def _real_small(args, out: Path, rows: list) -> dict:
    """The same comparison on the small space with real accuracy: a supernet trained here
    (BN recalibrated per subnet) and a latency predictor profiled here."""
    from hwnas.data import load_dataset
    from hwnas.predictor import default_predictor_path, fit_for_device, load_predictor
    from hwnas.profile import profile
    from hwnas.search import SupernetAccuracy
    from hwnas.space import get_space
    from hwnas.train import TrainConfig, train

    space = get_space("small")
    lut = out / "lut"
    t = time.perf_counter()
    profile(args.device, space, subnets=60, out_dir=lut, progress=False)
    fit_for_device(args.device, "xgboost", space="small", n_train=40, lut_dir=lut)
    pred = load_predictor(default_predictor_path(args.device, lut), space=space)
    profile_s = time.perf_counter() - t
    t = time.perf_counter()
    tr, _ = load_dataset(args.real_data, max(space.resolutions))
    ckpt = train(space, tr, TrainConfig(epochs=args.real_epochs), out / "supernet",
                 progress=False).checkpoint
    train_s = time.perf_counter() - t
    acc = Memo(SupernetAccuracy(ckpt, space, args.real_data, calib_batches=2))
    lo = float(pred.predict([space.smallest()])[0])
    hi = float(pred.predict([space.largest()])[0])
    budgets = tuple(round(lo + f * (hi - lo), 4) for f in (0.35, 0.65))
    _, part_rows, hv = compare_algorithms(space, args.device, pred, acc, budgets,
                                          args.real_evaluations, args.seeds, out / "runs",
                                          f"small/supernet ({args.real_data})", args.verify,
                                          args.verify_limit, lut)
    rows.extend(part_rows)
    return {"data": args.real_data, "epochs": args.real_epochs, "budgets_ms": budgets,
            "evaluations": args.real_evaluations, "profile_s": profile_s, "train_s": train_s,
            "distinct_archs_evaluated": len(acc.cache),
            "mean_normalised_hv": {a: float(np.mean([hv[a, s] for s in range(args.seeds)]))
                                   for a in ALGOS},
            "beats_random_every_seed": {a: all(hv[a, s] > hv["random", s]
                                               for s in range(args.seeds))
                                        for a in ("nsga2", "moga", "nat")}}


def _predictor(args, space):
    """The device's predictor as a search gets it: its tables' probes timed again here, a
    drift scaling the predictions (and said in the notes)."""
    from hwnas.predictor import default_predictor_path, device_predictor, fit_for_device

    if not default_predictor_path(args.device, args.lut).exists():
        fit_for_device(args.device, "xgboost", n_train=200, lut_dir=args.lut)
    return device_predictor(args.device, space, args.lut, allow_drift=True)


def _faster_tables(args, out: Path) -> str:
    """Copies of the device's tables as a machine ``F`` times faster would have recorded
    them (every latency and probe divided by F), with a predictor fitted on them."""
    from hwnas.lut import read_table, table_paths, write_table
    from hwnas.predictor import fit_for_device

    folder = out / "faster-tables"
    f = args.simulate_faster_table
    for path, kind in zip(table_paths(args.device, args.lut), ("ops", "subnets")):
        df, meta = read_table(path, kind)
        for col in ("latency_ms", "p10_ms", "p90_ms"):
            df[col] = df[col] / f
        if meta.get("probes"):
            meta["probes"]["ms"] = {k: v / f for k, v in meta["probes"]["ms"].items()}
        meta.pop("schema_version")
        write_table(df, folder / path.name, meta)
    fit_for_device(args.device, "xgboost", n_train=200, lut_dir=folder)
    return str(folder)


def _measure_again(args, space, pred, budgets, rows, out: Path) -> dict[str, tuple]:
    """Each row's arch timed once more as the search's verification times a check (a new
    process, the table's subnets nearest the prediction timed between its rounds, the
    latency at the table's speed in the predictions' terms): arch key -> (that, raw)."""
    import json

    from hwnas.devices import load_device
    from hwnas.ops import encode_batch
    from hwnas.search.verify import Verifier

    verifier = Verifier(load_device(args.device), space, pred, budgets, out / "measured",
                        lut_dir=args.lut)
    archs = [space.arch(json.loads(r["arch"])) for r in rows]
    verifier.measure(encode_batch(archs, space))
    return {k: (row["latency_ms"], row["raw_ms"]) for k, row in verifier.stored.items()}


def run(args) -> Result:
    from hwnas.ops import encode_batch
    from hwnas.search import (AccuracySurrogate, Evaluator, SupernetAccuracy,
                              parse_objectives, scored_rows)
    from hwnas.space import get_space

    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)  # pinned to one core: more threads would only contend
    space = get_space("default")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-search-"))
    if args.simulate_faster_table:
        args.lut = _faster_tables(args, out)
    pred, how = _predictor(args, space)
    lo = float(pred.predict([space.smallest()])[0])
    hi = float(pred.predict([space.largest()])[0])
    budgets = tuple(round(lo + float(f) * (hi - lo), 2) for f in args.budgets.split(","))
    accuracy = (SupernetAccuracy(args.checkpoint, space, args.data) if args.checkpoint
                else Landscape(space))
    source = "supernet" if args.checkpoint else "landscape (benchmark function)"
    objs = parse_objectives(("acc", f"latency:{args.device}"))
    runs, rows, hv = compare_algorithms(space, args.device, pred, accuracy, budgets,
                                        args.evaluations, args.seeds, out / "default",
                                        "default/" + ("supernet" if args.checkpoint
                                                      else "landscape"), args.verify,
                                        args.verify_limit, args.lut)
    beats = {a: all(hv[a, s] > hv["random", s] for s in range(args.seeds))
             for a in ("nsga2", "moga", "nat")}
    # predictor-side cost of candidate evaluations (latency predictor + acc surrogate)
    ev = Evaluator(space, objs, {args.device: pred}, accuracy, args.device, max(budgets))
    nat_res = runs["nat", 0][0]
    sc = scored_rows(nat_res.archive, True)
    import json

    surrogate = AccuracySurrogate(space, "rbf").fit(
        [space.arch(json.loads(a)) for a in sc["arch"]], sc["acc"].to_numpy(float))
    X = encode_batch(space.sample(1000, seed=99), space)
    speed = {}
    for batch in (40, 1000):
        t = time.perf_counter()
        for i in range(0, len(X), batch):
            cheap = ev.cheap(X[i:i + batch])
            acc = surrogate.predict([space.decode(x) for x in X[i:i + batch]])
            ev.matrix(cheap, acc)
        speed[batch] = time.perf_counter() - t
    # measure the best arch per budget (over all runs) on the device
    best_rows, notes = [], []
    for b in budgets:
        cands = [r.best[b] for r, _ in runs.values() if b in r.best]
        best_rows.append((b, max(cands, key=lambda r: r["acc"])))
    measured = {} if args.no_measure else _measure_again(args, space, pred, budgets,
                                                         [r for _, r in best_rows], out)
    per_budget = []
    for b, r in best_rows:
        m, raw = measured.get(r["key"], (float("nan"), float("nan")))
        p = float(r[f"latency:{args.device}"])
        per_budget.append({"budget_ms": b, "arch": r["name"], "acc": float(r["acc"]),
                           "predicted_ms": p, "measured_ms": m, "measured/predicted": m / p,
                           "raw_ms": raw, "meets budget (measured)": bool(m <= b)})
    mean_hv = {a: float(np.mean([hv[a, s] for s in range(args.seeds)])) for a in ALGOS}
    real = {} if args.no_real else _real_small(args, out / "small", rows)
    targets: dict = {}
    verified = [r for r in rows if "measured on device" in r]
    if verified:
        targets["best-per-budget archs over budget when measured, all runs"] = (
            float(sum(r["best over budget (measured)"] for r in verified)), 0.0, "le")
        notes.append(f"on-device verification: {sum(r['measured on device'] for r in verified)}"
                     f" measurements on {args.device} over {len(verified)} runs (near-budget "
                     f"candidates, at most {args.verify_limit} per run, and every best per "
                     f"budget)")
        today = [r["to today"] for r in verified]
        if any(t != 1.0 for t in today):
            notes.append(f"the drift-scaled predictions' terms: a latency at the table's speed "
                         f"times {min(today):.2f}-{max(today):.2f} (the table's subnets' "
                         f"slowdown here, median over the checks so far), beside the "
                         f"drift check's ratio the predictions were scaled by")
    if not args.no_measure:
        targets["best per budget (over all runs) within budget, re-measured"] = (
            float(all(x["meets budget (measured)"] for x in per_budget)), 1.0, "ge")
    notes.append(f"predictor: {how}")
    targets.update({"nsga2 beats random on every seed": (float(beats["nsga2"]), 1.0, "ge"),
                    "nat beats random on every seed": (float(beats["nat"]), 1.0, "ge"),
                    "seconds per 1000 candidate evaluations (batches of 40)":
                        (speed[40], 1.0, "le")})
    notes.append(f"accuracy objective: {source}; {args.evaluations} accuracy evaluations per "
                 f"run; budgets {budgets} ms = {args.budgets} of the predicted range "
                 f"{lo:.2f}..{hi:.2f} ms; hypervolume normalised over all runs' points")
    if not args.no_measure:
        for x in per_budget:
            notes.append(f"best under {x['budget_ms']:g} ms ({x['arch']}, acc {x['acc']:.3f}): "
                         f"predicted {x['predicted_ms']:.3f} ms, measured on {args.device} "
                         f"{x['measured_ms']:.3f} ms (ratio {x['measured/predicted']:.3f}; "
                         f"raw {x['raw_ms']:.3f} ms)")
    return Result(rows=rows, summary={
        "device": args.device, "space": "default", "accuracy": source, "budgets_ms": budgets,
        "mean_normalised_hv": mean_hv, "beats_random_every_seed": beats,
        "best_per_budget": per_budget, "small_space_real_accuracy": real,
        "seconds_per_1000_candidates_batch40": speed[40],
        "seconds_per_1000_candidates_batch1000": speed[1000], "out": str(out)},
        targets=targets, notes=notes)
