"""Benchmark `clock`: what the clock timed beside a check of a prediction costs, and what
it buys (`hwnas.probe.ReferenceClock`).

A verification or export measurement times the device table's subnets nearest the
prediction between its rounds and divides each round by how much slower they ran than the
table. hwnas visits them in turn after each round until `CLOCK_MS` of their calls were
timed (one at least); the alternatives visit *one* a round, or *every* one every round.
All three run here side by side on the same archs, each variant and repeat in a new
process (as the verifier measures), the variants' order rotated between repeats. Per
variant: seconds per measured arch, the spread between repeats of one arch (sd of log
latency, at the table's speed and raw), and the distance from the device's predictor
(mean |log(measured / predicted)|, share within ±10%).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import Result

# variant -> CLOCK_MS: hwnas's, one reference a round, every reference every round
VARIANTS = {"hwnas": None, "one": 0.0, "every": float("inf")}


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu-onnxruntime")
    parser.add_argument("--space", default="default")
    parser.add_argument("--lut", default=str(Path(__file__).parent / "results" / "lut"),
                        help="the device's tables (and predictor) to clock by")
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)


def measure(variant: str, device: str, space: str, lut: str, arch_jsons: list[str],
            near_ms: list[float], cache: str) -> list[dict[str, Any]]:
    """Each arch measured as the verifier measures it, with the ``variant`` clock (run in a
    new process: the clock settings changed here stay there)."""
    import hwnas.probe as probe
    from hwnas.devices import load_device
    from hwnas.search.verify import time_archs
    from hwnas.space import get_space

    if VARIANTS[variant] is not None:
        probe.CLOCK_MS = VARIANTS[variant]
    visits = {"rounds": 0, "references": 0}
    drift = probe.ReferenceClock.drift

    def counted(clock) -> float:  # how many references each round visits
        before = clock.turn
        out = drift(clock)
        visits["rounds"] += 1
        visits["references"] += clock.turn - before
        return out

    probe.ReferenceClock.drift = counted
    dev, sp = load_device(device), get_space(space)
    out = []
    for text, near in zip(arch_jsons, near_ms):
        t = time.perf_counter()
        visits.update(rounds=0, references=0)
        st = time_archs(dev, sp, [sp.arch(json.loads(text))], Path(cache), Path(lut),
                        [near])[0]
        out.append({"raw_ms": st["latency_ms"], "at_table_speed_ms": st["at_table_speed_ms"],
                    "clock_during": st["drift"], "clock": st["clock"],
                    "visits": visits["references"] / max(visits["rounds"], 1),
                    "s": time.perf_counter() - t})
    return out


def run(args) -> Result:
    import tempfile

    from hwnas.devices import load_device
    from hwnas.predictor import default_predictor_path, device_predictor, fit_for_device
    from hwnas.profile import in_fresh_process
    from hwnas.search.verify import convert_ahead
    from hwnas.space import get_space

    space = get_space(args.space)
    cache = tempfile.mkdtemp(prefix="bench-clock-")
    saved = default_predictor_path(args.device, args.lut)
    if not saved.exists():  # predictors are not committed: fit one on the tables, as users do
        saved = Path(cache) / f"{args.device}.predictor.json"
        fit_for_device(args.device, "xgboost", lut_dir=args.lut, out=saved, space=space)
    predictor, how = device_predictor(args.device, space, args.lut, path=saved,
                                      check_drift=False)
    archs = space.sample(args.archs, np.random.default_rng(args.seed))
    near = [float(p) for p in predictor.predict(archs)]
    texts = [a.to_json() for a in archs]
    # every model converted here first, as the verifier does: no variant pays a conversion
    convert_ahead(load_device(args.device), space, archs, Path(cache), Path(args.lut), near)
    records, names = [], list(VARIANTS)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for variant in order:
            res, where = in_fresh_process(measure, variant, args.device, args.space,
                                          args.lut, texts, near, cache)
            records += [{"repeat": rep, "variant": variant, "arch": i, "predicted_ms": near[i],
                         "where": where, **r} for i, r in enumerate(res)]
    df = pd.DataFrame(records)
    df["err_at"] = np.log(df["at_table_speed_ms"] / df["predicted_ms"])
    df["err_raw"] = np.log(df["raw_ms"] / df["predicted_ms"])
    rows = []
    for variant in VARIANTS:
        d = df[df["variant"] == variant]
        by_arch = d.groupby("arch")
        rows.append({
            "clock": variant, "visits/round": float(d["visits"].mean()),
            "s/arch": float(d["s"].mean()),
            "sd_repeat_at_table": float(by_arch["err_at"].std().mean()),
            "sd_repeat_raw": float(by_arch["err_raw"].std().mean()),
            "err_at_table": float(d["err_at"].abs().mean()),
            "err_raw": float(d["err_raw"].abs().mean()),
            "in_10pct_at_table": float((np.abs(np.exp(d["err_at"]) - 1) <= 0.10).mean()),
            "clock_during": float(d["clock_during"].median()),
            "references": d["clock"].iloc[0]})
    ours, every = rows[0], rows[-1]
    return Result(
        rows=rows,
        summary={"device": args.device, "space": space.name, "predictor": how,
                 "archs": args.archs, "repeats": args.repeats,
                 "measured_in": sorted(set(df["where"]))},
        targets={
            "seconds per arch, hwnas / every": (ours["s/arch"] / every["s/arch"], 1.1, "le"),
            "sd between repeats at table speed, hwnas - every": (
                ours["sd_repeat_at_table"] - every["sd_repeat_at_table"], 0.005, "le"),
            "mean |log(measured / predicted)| at table speed, hwnas - every": (
                ours["err_at_table"] - every["err_at_table"], 0.01, "le")},
        notes=["hwnas: references visited in turn after each round until CLOCK_MS of their "
               "calls (one at least); one: one a round, in turn; every: every reference "
               "every round; each round's ratio is the median over the references visited",
               "sd_repeat_*: sd of log latency between the repeats of one arch, mean over "
               "archs; err_*: mean |log(measured / predicted)|; *_at_table: each round "
               "divided by its clock's ratio, *_raw: as timed"],
        details={"measurements": df.drop(columns=["err_at", "err_raw"]).to_dict("records")})
