"""What a search is asked to do: objectives by name and the validated settings.

:class:`SearchConfig` is everything a run needs, checked on construction and saved as the
run folder's ``config.json`` (a resumed run reads it back).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from hwnas.errors import HwnasError, check_settings

OBJECTIVE_KINDS = ("acc", "latency", "params", "macs")
# Accuracy sources named by ``--accuracy KIND:PATH``.
ACCURACY_SOURCES = ("ofa-predictor", "bn", "dna")
# sources whose values rate subnets (higher is better) without being top-1
RATINGS = {"bn": "BN-γ indicator", "dna": "minus DNA block loss"}
SURROGATES = ("rbf", "xgboost")
VERIFY = ("auto", "on", "off")


class SearchError(HwnasError, ValueError):
    """Bad search settings, or inputs the search cannot run with."""


@dataclass(frozen=True)
class Objective:
    """One objective by name: ``acc``, ``latency:<device>``, ``params`` or ``macs``."""

    name: str
    kind: str
    device: str | None = None

    @property
    def maximize(self) -> bool:
        return self.kind == "acc"


def parse_objectives(names: str | Sequence[str]) -> list[Objective]:
    """Objectives from ``"acc,latency:cpu-onnxruntime,params"`` or a list of names."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    items = [n for n in items if n]
    allowed = "acc, latency:<device>, params, macs"
    if not items:
        raise SearchError(f"no objective given; choose from {allowed}")
    out = []
    for name in items:
        kind, _, device = name.partition(":")
        if kind not in OBJECTIVE_KINDS:
            raise SearchError(f"unknown objective {name!r}; allowed: {allowed}")
        if kind == "latency" and not device:
            raise SearchError(f"objective {name!r} needs a device: latency:<device>, e.g. "
                              f"latency:cpu-onnxruntime")
        if kind != "latency" and device:
            raise SearchError(f"objective {name!r}: only latency takes a device")
        out.append(Objective(name, kind, device or None))
    dup = sorted({o.name for o in out if [p.name for p in out].count(o.name) > 1})
    if dup:
        raise SearchError(f"objective(s) {dup} given twice")
    return out


@dataclass
class SearchConfig:
    """Validated settings of one search (saved as ``config.json`` in the run folder)."""

    space: str = "default"
    objectives: tuple[str, ...] = ("acc", "latency:cpu-onnxruntime")
    budgets_ms: tuple[float, ...] = ()
    budget_device: str | None = None    # default: the first latency objective's device
    algorithm: str = "nsga2"
    evaluations: int = 200              # accuracy evaluations (all evaluations without acc)
    pop_size: int = 40
    seed: int = 0
    weights: dict[str, float] = field(default_factory=dict)  # moga: objective -> weight
    resolutions: tuple[int, ...] = ()   # restrict the resolution gene (default: all)
    lut_dir: str = "lut"
    predictors: dict[str, str] = field(default_factory=dict)  # device -> predictor file
    checkpoint: str | None = None       # supernet weights for acc
    data: str = "digits"
    calib_batches: int = 4
    accuracy_table: str | None = None   # or: a surrogate fitted on measured accuracies
    accuracy: str | None = None         # or: a named source, e.g. ofa-predictor:PATH
    nat_initial: int = 40               # nat: archive size before the first iteration
    nat_per_iteration: int = 10         # nat: archs evaluated per iteration
    nat_generations: int = 25           # nat: generations of the search on the surrogate
    nat_surrogate: str = "auto"         # nat: rbf, xgboost or auto (the better ranker)
    nat_adapt_steps: int = 0            # nat: supernet fine-tuning steps per iteration
    verify: str = "auto"                # measure near-budget archs on the budget device:
                                        # auto (when it runs here), on, off
    verify_limit: int = 100             # candidates measured during the search at most
    verify_margin: float = 0.03         # a verified best sits this fraction under its
                                        # budget: a second measurement of one arch here
                                        # differs by 1-4% (7% once, in a noisy phase)
    allow_drift: bool = False           # use tables whose probes drifted (scaled)

    def __post_init__(self) -> None:
        from hwnas.search.algorithms import ALGORITHMS

        self.objectives = tuple(o.name for o in parse_objectives(self.objectives))
        self.budgets_ms = tuple(sorted(float(b) for b in self.budgets_ms))
        self.resolutions = tuple(int(r) for r in self.resolutions)
        check_settings([
            ("algorithm", self.algorithm in ALGORITHMS,
             f"one of {', '.join(ALGORITHMS.choices())}"),
            ("evaluations", self.evaluations >= 2, ">= 2"),
            ("pop_size", self.pop_size >= 4, ">= 4"),
            ("budgets_ms", all(b > 0 and math.isfinite(b) for b in self.budgets_ms),
             "positive numbers of milliseconds"),
            ("calib_batches", self.calib_batches >= 1, ">= 1"),
            ("nat_initial", self.nat_initial >= 4, ">= 4"),
            ("nat_per_iteration", self.nat_per_iteration >= 1, ">= 1"),
            ("nat_generations", self.nat_generations >= 1, ">= 1"),
            ("nat_surrogate", self.nat_surrogate in SURROGATES + ("auto",),
             f"one of {', '.join(SURROGATES + ('auto',))}"),
            ("nat_adapt_steps", self.nat_adapt_steps >= 0, ">= 0"),
            ("verify", self.verify in VERIFY, f"one of {', '.join(VERIFY)}"),
            ("verify_limit", self.verify_limit >= 0, ">= 0"),
            ("verify_margin", 0 <= self.verify_margin < 1, "a fraction in [0, 1)"),
            ("allow_drift", isinstance(self.allow_drift, bool), "true or false")],
            SearchError, "search setting", self)
        objs = parse_objectives(self.objectives)
        names = {o.name for o in objs}
        bad = sorted(set(self.weights) - names)
        if bad:
            raise SearchError(f"weights for {bad}, which are not objectives; objectives: "
                              f"{sorted(names)}")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.weights.values()):
            raise SearchError(f"weights must be non-negative numbers, got {self.weights}")
        devices = [o.device for o in objs if o.kind == "latency"]
        if self.budgets_ms and self.budget_device is None:
            if not devices:
                raise SearchError("a budget needs a latency objective (latency:<device>)")
            self.budget_device = devices[0]
        if self.budget_device is not None and self.budget_device not in devices:
            raise SearchError(f"budget device {self.budget_device!r} is not among the latency "
                              f"objectives {devices}")
        sources = [n for n, v in (("--checkpoint", self.checkpoint),
                                  ("--accuracy-table", self.accuracy_table),
                                  ("--accuracy", self.accuracy)) if v]
        if len(sources) > 1:
            raise SearchError(f"give one accuracy source, not {' and '.join(sources)}")
        if self.accuracy is not None:
            kind, _, path = self.accuracy.partition(":")
            if kind not in ACCURACY_SOURCES or not path:
                raise SearchError(f"accuracy source {self.accuracy!r} is not one of "
                                  f"{', '.join(f'{k}:PATH' for k in ACCURACY_SOURCES)}")
        if self.algorithm == "nat" and "acc" not in names:
            raise SearchError("nat searches with an accuracy surrogate: add 'acc' to the "
                              "objectives")

    @property
    def accuracy_label(self) -> str:
        """What the ``acc`` values are: top-1, or a rating named by its source."""
        kind = (self.accuracy or "").partition(":")[0]
        return RATINGS.get(kind, "top-1 accuracy")

    def format_acc(self, value: float) -> str:
        return f"{value:.2%}" if self.accuracy_label == "top-1 accuracy" else f"{value:.4g}"

    @classmethod
    def from_flags(cls, device: str | None = None, objectives: str = "acc,latency",
                   budgets_ms: Sequence[float] = (), weights: str = "",
                   predictor: str | None = None, **settings: Any) -> "SearchConfig":
        """Settings as the command line gives them: ``latency`` means ``latency:<device>``
        (and the device's latency is always an objective), the budget is on ``device``,
        ``weights`` reads ``acc=1,latency=2``."""
        names = []
        for name in (n.strip() for n in objectives.split(",") if n.strip()):
            if name == "latency":
                if not device:
                    raise SearchError("objective 'latency' needs --device (or write "
                                      "latency:<device>)")
                name = f"latency:{device}"
            names.append(name)
        if device and f"latency:{device}" not in names:
            names.append(f"latency:{device}")
        parsed: dict[str, float] = {}
        for item in (t.strip() for t in weights.split(",") if t.strip()):
            key, sep, value = item.partition("=")
            try:
                w = float(value)
            except ValueError:
                w = None
            if not sep or w is None:
                raise SearchError(f"--weights must look like acc=1,latency=2; got {item!r}")
            parsed[f"latency:{device}" if key == "latency" and device else key] = w
        return cls(objectives=tuple(names), budgets_ms=tuple(budgets_ms),
                   budget_device=device if budgets_ms and device else None, weights=parsed,
                   predictors={device: str(predictor)} if device and predictor else {},
                   **settings)

    @property
    def parsed_objectives(self) -> list[Objective]:
        return parse_objectives(self.objectives)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        if not isinstance(data, Mapping):
            raise SearchError(f"search settings must be a JSON object, got "
                              f"{type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SearchError(f"unknown search setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, SearchError):
                raise
            raise SearchError(f"search settings of the wrong kind: {exc}") from None


__all__ = ["ACCURACY_SOURCES", "OBJECTIVE_KINDS", "Objective", "SURROGATES", "SearchConfig",
           "SearchError", "VERIFY", "parse_objectives"]
