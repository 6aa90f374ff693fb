"""What a search leaves: indicators (hypervolume), the result, its files and plots.

A run folder holds ``config.json``, ``archive.parquet``, ``pareto.csv``/``pareto.json``,
``best-<budget>ms.json`` (and ``best.json``, the tightest budget's), ``summary.json``,
``front.png`` and ``hypervolume.png``; every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hwnas.display import Table
from hwnas.files import atomic_write, atomic_write_json, json_default
from hwnas.search.archive import archive_objectives, scored_rows
from hwnas.search.config import SearchConfig
from hwnas.search.evaluator import Evaluator


def objective_bounds(evaluator: Evaluator) -> tuple[np.ndarray, np.ndarray]:
    """Ideal and nadir of every (minimised) objective for normalising hypervolume:
    error in [0, 1]; latency, params and MACs between the smallest and largest arch."""
    space = evaluator.space
    ends = np.stack([space.encode(space.smallest()), space.encode(space.largest())])
    cheap = evaluator.cheap(ends)
    lo, hi = [], []
    for o in evaluator.objectives:
        if o.kind == "acc":
            lo.append(-1.0)
            hi.append(0.0)
        else:
            v = cheap[o.name]
            lo.append(float(min(v)))
            hi.append(float(max(v)))
    return np.array(lo), np.array(hi)


def hypervolume(F: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Hypervolume of minimised points normalised to [0, 1] per objective, reference
    point 1.1 (so the extremes count); 0 for no points."""
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return 0.0
    span = np.where(upper > lower, upper - lower, 1.0)
    N = np.maximum((F - lower) / span, 0.0)  # a predictor may put an arch below the ideal
    N = N[np.all(N <= 1.1, axis=1)]
    if len(N) == 0:
        return 0.0
    N = N[non_dominated(N)]
    return float(HV(ref_point=np.full(F.shape[1], 1.1))(N)) / 1.1 ** F.shape[1]


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (all minimised)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=int)


@dataclass
class SearchResult:
    """What a search found and where it wrote it."""

    out_dir: Path
    archive: pd.DataFrame
    front: pd.DataFrame
    best: dict[float, dict[str, Any]]       # budget (ms, or 0: no budget) -> row
    hypervolume: list[tuple[int, float]]   # (accuracy evaluations, normalised HV)
    evaluations: int
    accuracy_calls: int
    seconds: float
    nat_log: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    config: SearchConfig | None = None
    verify: dict[str, Any] | None = None    # on-device verification: cost and findings

    def table(self) -> Table:
        """The best arch per budget, as ``hwnas search`` prints it (MACs and params
        counted for each)."""
        from hwnas.ops import count
        from hwnas.space import get_space

        cfg = self.config
        lat = [o.name for o in cfg.parsed_objectives if o.kind == "latency"]
        checked = "" if not self.verify else (
            f", {self.verify['measurements']} measured on {self.verify['device']}")
        table = Table(f"{cfg.algorithm}: best per budget ({self.evaluations} evaluations"
                      f"{checked}, {self.seconds:.0f} s)", ["budget", "arch", "acc", *lat,
                                                           "MMACs", "params (M)"])
        space = get_space(cfg.space)
        for b, row in self.best.items():
            c = count(space.arch(json.loads(row["arch"])), space)
            acc = cfg.format_acc(row["acc"]) if "acc" in cfg.objectives else "-"
            table.rows.append([f"{b:g} ms" if b else "-", row["name"], acc,
                               *[f"{row[k]:.3f} ms" + (" (measured)" if row.get(
                                   k + ":measured") else "") for k in lat],
                               f"{c.macs / 1e6:.1f}", f"{c.params / 1e6:.3f}"])
        return table


def best_per_budget(df: pd.DataFrame, cfg: SearchConfig, margin: float = 0.0
                    ) -> dict[float, dict[str, Any]]:
    """The best archive row under each budget (by the first objective, ties by latency),
    ``margin`` (a fraction) under it: the verification's guard against the noise of a
    second measurement (``SearchConfig.verify_margin``)."""
    objs = cfg.parsed_objectives
    first = objs[0]
    rows = scored_rows(df, "acc" in cfg.objectives)
    out: dict[float, dict[str, Any]] = {}
    if rows.empty:
        return out
    for b in cfg.budgets_ms or (0.0,):
        sub = rows if not b else \
            rows[rows[f"latency:{cfg.budget_device}"] * (1 + margin) <= b]
        if sub.empty:
            continue
        tie = f"latency:{cfg.budget_device}" if cfg.budget_device else first.name
        sub = sub.sort_values([first.name if first.kind != "acc" else "acc", tie],
                              ascending=[not first.maximize, True])
        out[b] = sub.iloc[0].to_dict()
    return out


def finish(cfg: SearchConfig, evaluator: Evaluator, out: Path,
           hv_trace: list[tuple[int, float]], nat_log: list[dict[str, Any]],
           seconds: float, plots: bool) -> SearchResult:
    """Write the run's files (front, best per budget, summary, plots); the result. With a
    verifier, each best-per-budget arch is measured first (``Verifier.confirm``)."""
    space = evaluator.space
    verified = None
    if evaluator.verifier is not None:
        verified = evaluator.verifier.confirm(evaluator.archive, cfg)
        evaluator.archive.flush()
    df = evaluator.archive.frame()
    rows = scored_rows(df, evaluator.has_acc)
    F = archive_objectives(rows, evaluator.objectives)
    front = rows.iloc[non_dominated(F)]
    if not front.empty:
        front = front.sort_values(
            [o.name if o.kind != "acc" else "acc" for o in evaluator.objectives][-1])
    files: dict[str, str] = {"archive": str(out / "archive.parquet"),
                             "config": str(out / "config.json")}
    atomic_write(out / "pareto.csv", lambda tmp: front.to_csv(tmp, index=False))
    atomic_write_json(out / "pareto.json",
                      [{"arch": json.loads(r["arch"]), **{k: r[k] for k in _value_columns(r)}}
                       for r in front.to_dict("records")], indent=1, default=json_default)
    files.update(pareto_csv=str(out / "pareto.csv"), pareto_json=str(out / "pareto.json"))
    best = best_per_budget(df, cfg, evaluator.verifier.margin if evaluator.verifier else 0.0)
    for i, (b, row) in enumerate(best.items()):
        arch = json.loads(row["arch"])
        name = f"best-{b:g}ms.json" if b else "best.json"
        atomic_write_json(out / name, arch)
        files[name] = str(out / name)
        if i == 0 and b:
            atomic_write_json(out / "best.json", arch)
            files["best.json"] = str(out / "best.json")
    summary = {"algorithm": cfg.algorithm, "space": space.name,
               "evaluations": evaluator.count, "accuracy_calls": evaluator.calls,
               "seconds": seconds, "hypervolume": hv_trace[-1][1] if hv_trace else 0.0,
               "best": {f"{b:g}": {k: row[k] for k in ["key", "name", *_value_columns(row)]}
                        for b, row in best.items()},
               "nat": nat_log, "hypervolume_trace": hv_trace, "verify": verified}
    atomic_write_json(out / "summary.json", summary, indent=2, default=json_default)
    files["summary"] = str(out / "summary.json")
    if plots:
        files.update(plot_run(out, cfg, df, front, best, hv_trace))
    return SearchResult(out, df, front, best, hv_trace, evaluator.count, evaluator.calls,
                        seconds, nat_log, files, cfg, verified)


def describe_best(row: Mapping[str, Any], cfg: SearchConfig) -> str:
    """A best row in a few characters (for the progress bar)."""
    if "acc" in cfg.objectives:
        return cfg.format_acc(row["acc"])
    first = cfg.objectives[0]
    return f"{first}={row[first]:.4g}"


def _value_columns(row: Mapping[str, Any]) -> list[str]:
    return [k for k in row if k in ("acc", "params", "macs", "r") or k.startswith("latency:")]


def plot_run(out: Path, cfg: SearchConfig, df: pd.DataFrame, front: pd.DataFrame,
             best: Mapping[float, Mapping[str, Any]], hv_trace: Sequence[tuple[int, float]]
             ) -> dict[str, str]:
    """``front.png`` (first two objectives, budget lines, best per budget) and
    ``hypervolume.png`` (normalised hypervolume over evaluations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = cfg.parsed_objectives
    files = {}
    x_obj = next((o for o in objs if o.kind == "latency"), objs[-1])
    y_obj = next((o for o in objs if o is not x_obj), x_obj)
    col = lambda o: "acc" if o.kind == "acc" else o.name  # noqa: E731
    rows = scored_rows(df, "acc" in cfg.objectives)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if len(rows):
        ax.scatter(rows[col(x_obj)], rows[col(y_obj)], s=10, alpha=0.35, color="grey",
                   label=f"evaluated ({len(rows)})")
        ax.plot(front[col(x_obj)], front[col(y_obj)], "o-", color="tab:blue", ms=4,
                label=f"Pareto front ({len(front)})")
    for b, row in best.items():
        if b:
            ax.axvline(b, color="tab:red", ls="--", lw=0.8)
        ax.plot(row[col(x_obj)], row[col(y_obj)], "*", color="tab:red", ms=12)
    ax.set_xlabel(x_obj.name + (" (ms, predicted)" if x_obj.kind == "latency" else ""))
    ax.set_ylabel(cfg.accuracy_label if y_obj.kind == "acc" else y_obj.name)
    ax.set_title(f"{cfg.algorithm} on {cfg.space}: front and best per budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=120)
    plt.close(fig)
    files["front_png"] = str(out / "front.png")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if hv_trace:
        xs, ys = zip(*hv_trace)
        ax.plot(xs, ys, "-", color="tab:green")
    ax.set_xlabel("accuracy evaluations" if "acc" in cfg.objectives else "evaluations")
    ax.set_ylabel("normalised hypervolume")
    ax.set_title(f"{cfg.algorithm}: hypervolume over the search")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=120)
    plt.close(fig)
    files["hypervolume_png"] = str(out / "hypervolume.png")
    return files


__all__ = ["SearchResult", "best_per_budget", "describe_best", "finish", "hypervolume",
           "non_dominated", "objective_bounds", "plot_run"]
