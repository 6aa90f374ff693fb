"""Run a search: check every input before any work, run the algorithm, write the folder.

:func:`search` is the one entry point (the CLI's ``hwnas search`` is a thin layer over it);
:func:`prepare` refuses bad input (objectives, devices, predictors, budgets, the accuracy
source) before anything is evaluated. Resume: every accuracy is kept in the archive, and
the algorithms are deterministic given the seed, so a resumed run replays the same
trajectory, answering accuracies from the archive, and continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas import encoding
from hwnas.display import progress as progress_bar
from hwnas.errors import ArchError, read_json
from hwnas.files import atomic_write_json
from hwnas.search.algorithms import ALGORITHMS, SearchRun
from hwnas.search.archive import Archive, archive_objectives, scored_rows
from hwnas.search.config import SearchConfig, SearchError
from hwnas.search.evaluator import AccuracyFn, Evaluator, accuracy_source
from hwnas.search.report import (SearchResult, best_per_budget, describe_best, finish,
                                 hypervolume, objective_bounds)
from hwnas.search.verify import make_verifier
from hwnas.space import SearchSpace, get_space


def _check_budgets(cfg: SearchConfig, space: SearchSpace, predictors: Mapping[str, Any],
                   r_genes: np.ndarray) -> None:
    if not cfg.budgets_ms:
        return
    smallest = space.smallest()
    r_min = space.resolutions[int(r_genes[0])]
    smallest = space.at_resolution(smallest, r_min)
    floor = float(np.asarray(predictors[cfg.budget_device].predict([smallest]))[0])
    low = [b for b in cfg.budgets_ms if b < floor]
    if low:
        raise SearchError(f"budget(s) {low} ms are below the predicted latency of the "
                          f"smallest network on {cfg.budget_device} ({floor:.3f} ms); no arch "
                          f"can meet them")


def prepare(cfg: SearchConfig, accuracy: AccuracyFn | None = None,
            predictors: Mapping[str, Any] | None = None,
            archive_path: Path | None = None) -> tuple[Evaluator, np.ndarray, AccuracyFn | None]:
    """Check everything a search needs before any work: objectives, devices, predictors,
    budgets, the accuracy source. Returns the evaluator and the allowed resolution genes."""
    from hwnas.predictor import PredictorError, device_predictor

    space = get_space(cfg.space)
    objs = cfg.parsed_objectives
    try:
        r_genes = encoding.resolution_genes(space, cfg.resolutions)
    except ArchError as exc:
        raise SearchError(str(exc)) from None
    preds = dict(predictors or {})
    for o in objs:
        if o.kind == "latency" and o.device not in preds:
            try:
                preds[o.device], _ = device_predictor(o.device, space, cfg.lut_dir,
                                                      cfg.predictors.get(o.device),
                                                      allow_drift=cfg.allow_drift)
            except PredictorError as exc:
                raise SearchError(str(exc)) from None
    drift = archive_path.with_name(DRIFT_FILE) if archive_path is not None else None
    if drift is not None and drift.exists():  # before the budgets are checked against them
        use_recorded_drift(preds, drift)
    for device, p in preds.items():
        if p.space.id != space.id:
            raise SearchError(f"the predictor for {device} is for space {p.space.name!r}, the "
                              f"search is over {space.name!r}")
    _check_budgets(cfg, space, preds, r_genes)
    if "acc" in cfg.objectives and accuracy is None:
        accuracy = accuracy_source(cfg, space, [space.resolutions[i] for i in r_genes])
    evaluator = Evaluator(space, objs, preds, accuracy, cfg.budget_device,
                          max(cfg.budgets_ms) if cfg.budgets_ms else None, Archive(archive_path))
    return evaluator, r_genes, accuracy


DRIFT_FILE = "drift.json"


def use_recorded_drift(predictors: dict[str, Any], path: Path) -> None:
    """A run keeps the drift scale its predictions started with. ``--allow-drift`` scales
    predictions by how fast this machine runs the tables' probes today; a resumed run that
    took today's factor would cut the budget elsewhere and leave the trajectory it replays
    (other archs measured, other archs evaluated). So a resumed run predicts with the
    factors its first run recorded (:func:`record_drift`); a drift beyond the tolerance
    without ``--allow-drift`` is still refused by the predictor's own check."""
    from hwnas.probe import Drift, ScaledPredictor

    recorded = read_json(path, SearchError, "recorded drift")
    if not isinstance(recorded, dict):
        raise SearchError(f"{path}: expected an object of device -> drift ratio, found "
                          f"{type(recorded).__name__}")
    for device, ratio in recorded.items():
        if ratio is not None and not (type(ratio) in (int, float) and ratio > 0):
            raise SearchError(f"{path}: the drift ratio of {device!r} must be a positive "
                              f"number or null, found {ratio!r}")
        if device in predictors:
            pred = predictors[device]
            base = pred.base if isinstance(pred, ScaledPredictor) else pred
            predictors[device] = base if ratio is None else ScaledPredictor(
                base, Drift(float(ratio), f"predictions scaled by {ratio:.2f}, as when the "
                                          f"run started", scaled=True))


def record_drift(predictors: Mapping[str, Any], path: Path) -> None:
    """Write each device's drift factor (None: predictions not scaled) for a resume."""
    from hwnas.probe import ScaledPredictor

    atomic_write_json(path, {device: float(p.drift.ratio) if isinstance(p, ScaledPredictor)
                             else None for device, p in predictors.items()}, indent=2)


def search(cfg: SearchConfig | None, out_dir: str | Path | None = None, resume: bool = False,
           accuracy: AccuracyFn | None = None, predictors: Mapping[str, Any] | None = None,
           progress: bool = True, plots: bool = True) -> SearchResult:
    """Run a search into ``out_dir`` (default ``runs/search-<time>``). ``accuracy`` and
    ``predictors`` (device -> predictor) override what ``cfg`` names (Python API). With
    ``resume`` the run in ``out_dir`` continues from its own ``config.json`` (``cfg`` may
    then be None)."""
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir else Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
    config_path, archive_path = out / "config.json", out / "archive.parquet"
    if resume:
        if not config_path.exists():
            raise SearchError(f"cannot resume {out}: it has no config.json (not a search run)")
        try:
            cfg = SearchConfig.from_dict(read_json(config_path, SearchError, "search config"))
        except SearchError as exc:
            raise SearchError(f"{config_path}: {exc}") from None
    elif cfg is None:
        raise SearchError("a new search needs its settings (a SearchConfig)")
    elif archive_path.exists():
        raise SearchError(f"{out} already holds a search; resume it with --resume {out} or "
                          f"choose another --out")
    evaluator, r_genes, accuracy = prepare(cfg, accuracy, predictors,
                                           archive_path if resume else None)
    out.mkdir(parents=True, exist_ok=True)
    if not (resume and (out / DRIFT_FILE).exists()):
        record_drift(evaluator.predictors, out / DRIFT_FILE)
    evaluator.archive.path = archive_path
    verifier = make_verifier(cfg, evaluator.space, evaluator.predictors, out)
    if verifier is not None:  # the budget device answers measured values where it has them
        evaluator.predictors[cfg.budget_device] = evaluator.verifier = verifier
    atomic_write_json(config_path, cfg.to_dict(), indent=2)
    lower, upper = objective_bounds(evaluator)
    hv_trace: list[tuple[int, float]] = []
    run_ = SearchRun(cfg, evaluator, accuracy, r_genes, lambda: None)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{cfg.algorithm}", total=cfg.evaluations)

        def on_generation() -> None:
            df = evaluator.archive.frame()
            rows = scored_rows(df, evaluator.has_acc)
            F = archive_objectives(rows, evaluator.objectives) if len(rows) else np.zeros((0, 1))
            hv_trace.append((evaluator.count, hypervolume(F, lower, upper)))
            best = best_per_budget(df, cfg, verifier.margin if verifier else 0.0) \
                if len(rows) else {}
            text = " ".join(f"≤{b:g}ms {describe_best(r, cfg)}" if b else describe_best(r, cfg)
                            for b, r in best.items())
            bar.update(task, completed=min(evaluator.count, cfg.evaluations),
                       description=f"{cfg.algorithm} {text}")

        run_.on_generation = on_generation
        ALGORITHMS.get(cfg.algorithm)(run_)
    evaluator.archive.flush()
    return finish(cfg, evaluator, out, hv_trace, run_.log, time.perf_counter() - t0, plots)


__all__ = ["DRIFT_FILE", "prepare", "record_drift", "search", "use_recorded_drift"]
