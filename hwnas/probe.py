"""Calibration probes: is this machine still the one a table was measured on?

A fingerprint names a machine ("AMD EPYC", 2 cores, ONNX Runtime 1.32) but cannot tell two
machines of that name apart: one fresh VM ran every op 1.71x slower than the table
recorded on another, and every budget the search promised was broken. So every table also
stores the timings of a few fixed ops (the *probes*, the same for every space), and
whenever a local device's table or predictor is used the probes are timed again. A drift
beyond ±10% is refused, saying by how much; ``allow_drift`` proceeds with predictions
scaled by the measured ratio, and says so. Where the device has a subnet table, a few of
its subnets are then timed again too, and their ratio is the scale: single ops track whole
networks loosely (on one host the probes ran 1.38-1.41x their table's times while the
table's subnets ran 1.63-1.79x), and a table's subnets are in the predictions' own terms.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from hwnas.errors import HwnasError
from hwnas.ops import OpSpec

TOLERANCE = 0.10
RETRIES = 2          # a drift beyond TOLERANCE is timed again this many times
RETRY_PAUSE_S = 1.0  # after this long, to leave a slow window of the host
T = TypeVar("T")
# A handful of ops of every kind that matters (1x1 and depthwise 3/5/7 convolutions, SE,
# both activations, the classifier), sized so that each takes 0.05-2 ms on a laptop core.
PROBES = (
    OpSpec("stem", 96, 3, 16, kernel=3, stride=2, act="hswish"),
    OpSpec("mbconv", 28, 24, 24, 96, 4, 3, 1, "relu", 0, True),
    OpSpec("mbconv", 14, 40, 40, 240, 6, 5, 1, "hswish", 64, True),
    OpSpec("mbconv", 7, 80, 80, 480, 6, 7, 1, "hswish", 0, True),
    OpSpec("classifier", 1, 1280, 1000),
)


class DriftError(HwnasError):
    """This machine runs the probes at another speed than the table recorded."""


@dataclass(frozen=True)
class Drift:
    """The result of re-timing a table's probes: ``ratio`` (now / then, median over the
    probes; None when not checked) and why not, or how spread the per-probe ratios are."""

    ratio: float | None
    note: str
    scaled: bool = False

    @property
    def checked(self) -> bool:
        return self.ratio is not None


def _probe_protocol(device):
    """Every probe visit times >= 30 ms: long enough to ride out the timer's noise."""
    return dataclasses.replace(device.protocol, warmup=2, runs=10, rounds=8,
                               min_time_ms=max(device.protocol.min_time_ms, 30.0))


def _prepare_probes(device, cache_dir, backend) -> list:
    from hwnas.backends import get_backend
    from hwnas.backends.base import model_key

    backend = backend or get_backend(device, cache_dir)
    items = [(op.build, device.input_shape(op.input_shape), model_key(f"probe|{op.key}", device))
             for op in PROBES]
    return backend.prepare_many(items)


def measure_probes(device, cache_dir: str | Path | None = None, backend=None
                   ) -> dict[str, Any]:
    """Time :data:`PROBES` on ``device`` (at its batch): what a table stores as ``probes``
    in its metadata. Each probe is visited in 8 interleaved rounds of >= 30 ms and scored
    by its fastest round's median: on a shared VM the host's speed swings by 25% over
    seconds, which moves a median of all calls as much, while the fastest round repeats to
    within 1% (measured here: 6 back-to-back probes, median-of-calls ratios 0.75-1.24,
    fastest-round ratios 1.00-1.01). About 2 s on a CPU."""
    from hwnas.profile import pinned

    proto = _probe_protocol(device)
    with pinned(device.cpu_affinity, device.threads):
        rounds = _timed_rounds(_prepare_probes(device, cache_dir, backend), proto,
                               lambda ms: float(np.median(ms)))
    return {"ms": {op.key: min(v) for op, v in zip(PROBES, rounds)},
            "statistic": "fastest round's median",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _timed_rounds(runners, proto, value) -> list[list[float]]:
    """After settling, ``proto.rounds`` interleaved rounds over ``runners`` (as the
    profiler times): each runner's ``value`` of each visit's calls (ms), one list per
    runner. Closes the runners."""
    from hwnas.profile import settle, timed_visit

    try:
        settle(runners[0], proto)
        rounds: list[list[float]] = [[] for _ in runners]
        for _ in range(proto.rounds):
            for runner, values in zip(runners, rounds):
                values.append(value(timed_visit(runner, proto) * 1e3))
        return rounds
    finally:
        for runner in runners:
            runner.close()


class ProbeClock:
    """The probes, prepared once and timed one round at a time *between* the rounds of a
    measurement: how fast this machine ran, against a table's stored probes, while it was
    measured. The host runs at one speed for seconds and then at another 40-50% slower; a
    measurement of a second lands in one or the other, and only probes timed beside it
    can tell which (an export measured x1.59 its prediction while probes timed right after
    it said x1.03). Call inside the measurement's ``pinned`` block."""

    def __init__(self, device, stored: Mapping[str, Any], cache_dir=None, backend=None) -> None:
        self.stored = stored
        self.proto = _probe_protocol(device)
        self.runners = _prepare_probes(device, cache_dir, backend)

    label = "calibration probes"

    def drift(self) -> float:
        """One round of the probes: the median over them of now / stored. A round's median
        is a little slower than the stored fastest round's (a few %, in calm phases)."""
        from hwnas.profile import timed_visit

        now = {op.key: float(np.median(timed_visit(runner, self.proto))) * 1e3
               for op, runner in zip(PROBES, self.runners)}
        return compare(self.stored, {"ms": now})[0]

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


REFERENCES = 5      # profiled subnets a measurement is timed beside (ReferenceClock)
MIN_REFERENCES = 3  # fewer in a table's calmer half: the probes instead
CLOCK_MS = 100.0    # reference calls timed after each round of a measurement, at least


class ReferenceClock:
    """Subnets of the device's own subnet table, the nearest in latency to the model being
    measured, timed *between* the rounds of a measurement: how fast this
    machine ran the same runtime on networks of that size, against the table. The probes
    are single ops; on this VM they ran 1.26x their stored time while a net measured
    1.52x its prediction at a 97% held-out predictor. A net's own kind tracks the host's
    slow phases as the probes do not, and a table's values are the prediction's own terms.
    After each round the references are visited in turn (nearest first, each at most
    once a round) until :data:`CLOCK_MS` of their calls were timed: one of the default
    space's nets (a visit of 150-250 ms) a round, every one of the small space's (10-15 ms
    each). Visiting all 5 every round cost the default space 1.9-2.8x the time per checked
    arch and was no steadier (`python -m benchmarks clock`).
    Same interface as :class:`ProbeClock`; call inside the measurement's ``pinned`` block."""

    def __init__(self, device, rows, space, backend) -> None:
        self.stored = rows["latency_ms"].to_numpy(float)
        self.proto = device.protocol
        self.runners = _prepare_subnets(device, rows, space, backend)
        self.turn = 0

    @property
    def label(self) -> str:
        return f"{len(self.runners)} profiled subnets"

    def drift(self) -> float:
        """The next references in turn, until :data:`CLOCK_MS` of calls (one at least,
        each once at most): the median over them of now / table."""
        from hwnas.profile import summarize, timed_visit

        ratios, spent = [], 0.0
        while len(ratios) < len(self.runners) and (not ratios or spent < CLOCK_MS):
            i, self.turn = self.turn % len(self.runners), self.turn + 1
            samples = timed_visit(self.runners[i], self.proto) * 1e3
            spent += float(samples.sum())
            now = summarize(samples, self.proto.statistic)["latency_ms"]
            ratios.append(now / self.stored[i])
        return float(np.median(ratios))

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


def reference_rows(device: str, lut_dir: str | Path, space, near_ms: float | None,
                   exclude: str = "", n: int = REFERENCES):
    """The ``n`` rows of ``device``'s subnet table for ``space`` nearest in latency to
    ``near_ms`` (log scale), leaving out the key ``exclude`` (the measured arch itself would
    make the figure a re-measurement) and then keeping the calmer half of the rest (spread at
    most their median: a table of 6 still gives 3);
    None where there is no such table for ``space`` or fewer than :data:`MIN_REFERENCES`
    rows qualify."""
    if not near_ms or near_ms <= 0:
        return None
    calm = _calm_subnets(device, lut_dir, exclude)
    if calm is None or calm[1].id != space.id:
        return None
    df = calm[0]
    distance = np.abs(np.log(df["latency_ms"].to_numpy(float) / near_ms))
    return df.iloc[np.argsort(distance, kind="stable")[:n]]


def _calm_subnets(device: str, lut_dir: str | Path, exclude: str = ""):
    """The calmer half (spread at most their median) of the rows of ``device``'s subnet
    table with a latency, the key ``exclude`` left out first, with the table's space and
    path; None without such a table or with fewer than :data:`MIN_REFERENCES` rows."""
    from hwnas.lut import read_table, table_paths
    from hwnas.space import SearchSpace

    path = table_paths(device, lut_dir)[1]
    if not path.exists():
        return None
    df, meta = read_table(path, "subnets")
    if "space" not in meta:
        return None
    df = df[(df["key"] != exclude) & (df["latency_ms"] > 0)]
    df = df[df["spread"] <= df["spread"].median()]
    if len(df) < MIN_REFERENCES:
        return None
    return df, SearchSpace.from_dict(meta["space"]), str(path)


def _prepare_subnets(device, rows, space, backend) -> list:
    """Runners of the subnets of a subnet table's ``rows`` (their ``arch``) on ``device``."""
    from hwnas.profile import subnet_items

    items = subnet_items([space.arch(json.loads(a)) for a in rows["arch"]], space)
    return backend.prepare_many([it.spec(device) for it in items])


def drift_nets(device: str, lut_dir: str | Path, n: int = REFERENCES):
    """What the drift check times beside the probes: ``n`` rows of ``device``'s subnet
    table evenly spread over its latencies (from the calmer half of its rows, as
    :func:`reference_rows`), and the table's space and path; None without such a table."""
    calm = _calm_subnets(device, lut_dir)
    if calm is None:
        return None
    df, space, path = calm
    df, k = df.sort_values("latency_ms", kind="stable"), min(n, len(df))
    return df.iloc[((np.arange(k) + 0.5) / k * len(df)).astype(int)], space, path


def _net_protocol(device):
    """12 interleaved rounds of >= 20 ms visits, about 2.5 s for five nets of 3-7 ms. A
    snapshot of the host's phase: on an AMD host the nets' 3-second medians moved between
    1.56x and 1.93x their table times over 90 s (median 1.74x; phases of 3-10 s), checks
    said 1.63-1.80x and once 2.05x, and 24 rounds were no steadier (1.58-1.80x)."""
    return dataclasses.replace(device.protocol, warmup=1, runs=3, rounds=12,
                               min_time_ms=max(device.protocol.min_time_ms, 20.0))


def retime_nets(device, rows, space, cache_dir: str | Path | None = None
                ) -> tuple[float, float, float]:
    """Time the subnets of a subnet table's ``rows`` now, pinned as the profiler is, in
    interleaved rounds: (median, p10, p90) over the nets of now / table, each net's now
    the median over rounds of its protocol statistic of the round's calls."""
    from hwnas.backends import get_backend
    from hwnas.profile import pinned, summarize

    proto = _net_protocol(device)
    with pinned(device.cpu_affinity, device.threads):
        rounds = _timed_rounds(
            _prepare_subnets(device, rows, space, get_backend(device, cache_dir)), proto,
            lambda ms: summarize(ms, proto.statistic)["latency_ms"])
    r = np.median(rounds, axis=1) / rows["latency_ms"].to_numpy(float)
    return float(np.median(r)), float(np.percentile(r, 10)), float(np.percentile(r, 90))


def measurement_clock(device, arch, space, lut_dir: str | Path, near_ms: float | None):
    """What a check of a prediction times between its rounds (``time_runner``'s clock):
    the device table's subnets nearest the prediction (:class:`ReferenceClock`), else the
    table's probes (:class:`ProbeClock`), else nothing (a phone, where one visit is a whole
    benchmark_model run, or a device without tables). Call inside ``pinned``."""
    from hwnas.backends import get_backend

    if device.backend.startswith("adb"):
        return None
    # converted models are cached beside the tables (as the profile and drift check keep them)
    cache = Path(lut_dir) / ".cache" / device.name
    rows = reference_rows(device.name, lut_dir, space, near_ms, exclude=arch.key)
    if rows is not None:
        return ReferenceClock(device, rows, space, get_backend(device, cache))
    probes = table_probes(device.name, lut_dir)[0]
    return ProbeClock(device, probes, cache) if probes and probes.get("ms") else None


def time_beside_table(device, model, shape, key: str, arch, space, lut_dir: Path | None,
                      near_ms: float | None, cache_dir: Path, speed: float = 1.0
                      ) -> dict[str, Any]:
    """Time ``model`` (a model file, or a module the backend converts under ``key``) on
    ``device`` with the profiling protocol, pinned, with :func:`measurement_clock` timed
    between its rounds where there is a table: what a check of a prediction times (the
    search's verification, an export's measurement, each in a new process), timed again
    while the clock reads off ``speed`` (:func:`time_near_table_speed`). The stats also
    hold the clock's ``label`` as ``clock``."""
    from hwnas.backends import get_backend
    from hwnas.profile import pinned, time_runner

    backend = get_backend(device, cache_dir)
    with pinned(device.cpu_affinity, device.threads):
        runner = backend.load(model, shape) if isinstance(model, Path) else \
            backend.prepare(model, shape, key)
        clock = measurement_clock(device, arch, space, lut_dir, near_ms) if lut_dir else None
        try:
            stats = time_near_table_speed(runner, device.protocol, clock, speed) if clock \
                else time_runner(runner, device.protocol)
        finally:
            runner.close()
            if clock is not None:
                clock.close()
    if clock is not None:
        stats["clock"] = clock.label
    return stats


def time_near_table_speed(runner, protocol, clock, speed: float = 1.0) -> dict[str, Any]:
    """:func:`hwnas.profile.time_runner` with ``clock``, timed again after a pause (up to
    :data:`RETRIES` times) while the clock ran more than ±10% off ``speed`` times its table
    times (1: the table's speed; a prediction scaled for a drift of the machine: that
    drift): the try whose clock read nearest it is kept, and all of them are listed in
    ``tries`` ([latency_ms, drift] each). This host runs at one speed for seconds to
    minutes and then at another; a check timed in one slow window read x1.38 of its
    prediction raw while side by side with the table's subnets it read x1.01."""
    from hwnas.profile import time_runner

    def off(stats: dict[str, Any]) -> float:
        return abs(stats["drift"] / speed - 1)

    tries = timed_again_while_off([time_runner(runner, protocol, clock)],
                                  lambda done: [*done, time_runner(runner, protocol, clock)],
                                  lambda done: off(done[-1]))
    kept = min(tries, key=off)
    if len(tries) > 1:
        kept = {**kept, "tries": [[t["latency_ms"], t["drift"]] for t in tries]}
    return kept


def retime(then: Mapping[str, Any], device, cache_dir: str | Path | None = None, backend=None
           ) -> tuple[dict[str, Any], tuple[float, float, float]]:
    """Time the probes now and compare them with ``then``: (now, (median, p10, p90) of
    now/then). A drift beyond ±10% is timed again after a pause, up to :data:`RETRIES`
    times, each probe keeping its fastest timing: this host runs at one speed for seconds
    and then at another (one net measured 0.151 ms for nine visits and 0.21 ms for the
    next three, within a second), so one slow window alone is not taken for a drift."""
    def again(now: dict[str, Any]) -> dict[str, Any]:
        later = measure_probes(device, cache_dir, backend)
        return {**later, "ms": {k: min(v, now["ms"].get(k, v)) for k, v in later["ms"].items()}}

    now = timed_again_while_off(measure_probes(device, cache_dir, backend), again,
                                lambda now: abs(compare(then, now)[0] - 1))
    return now, compare(then, now)


def timed_again_while_off(first: T, again: Callable[[T], T], off: Callable[[T], float]) -> T:
    """``first``, replaced by ``again(it)`` after a pause of :data:`RETRY_PAUSE_S` while
    ``off(it)`` (how far from the speed aimed at, as a fraction) exceeds :data:`TOLERANCE`,
    up to :data:`RETRIES` times: the one rule by which probes and checks leave a slow
    window of the host."""
    result = first
    for _ in range(RETRIES):
        if off(result) <= TOLERANCE:
            break
        time.sleep(RETRY_PAUSE_S)
        result = again(result)
    return result


def compare(then: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[float, float, float]:
    """(median, p10, p90) of now/then over the probes both timed."""
    a, b = then.get("ms") or {}, now.get("ms") or {}
    ratios = np.array([b[k] / a[k] for k in a if k in b and a[k] > 0])
    if ratios.size == 0:
        raise DriftError("the stored probes and this machine's share no probe")
    return (float(np.median(ratios)), float(np.percentile(ratios, 10)),
            float(np.percentile(ratios, 90)))


_CHECKED: dict[tuple, Drift] = {}


def check_drift(device, probes: Mapping[str, Any] | None, where: str,
                allow_drift: bool = False, cache_dir: str | Path | None = None,
                nets=None) -> Drift:
    """Re-time the probes of the table at ``where`` on ``device`` when this machine can run
    it. Beyond ±10% it raises :class:`DriftError` unless ``allow_drift``: then the drift is
    returned with ``scaled`` set, for the caller to scale its predictions, and where
    ``nets`` are given (:func:`drift_nets`: rows, space, path) the ratio is theirs, timed
    now. The probes decide whether the machine drifted: timed as their fastest round they
    repeat to within 1%, while a table's nets, held against their median, move with the
    host's slow windows (right after a profile, 0.93-1.58x net by net). Checked once per
    process for each table."""
    from hwnas.devices import check_usable, load_device

    device = load_device(device)
    if not probes or not probes.get("ms"):
        return Drift(None, f"{where} has no calibration probes (measured before hwnas "
                           f"stored them); drift not checked")
    problem = check_usable(device)
    if problem:
        return Drift(None, f"drift not checked: {device.name} is not usable here ({problem})")
    if device.backend.startswith("adb"):
        nets = None  # a visit is a whole benchmark_model run: the probes alone
    key = (device.name, where, json.dumps(probes, sort_keys=True), allow_drift,
           nets and (nets[2], *nets[0]["key"], *nets[0]["latency_ms"]))
    if key not in _CHECKED:
        ratio, lo, hi = retime(probes, device, cache_dir)[1]
        text = (f"this machine runs the calibration probes {ratio:.2f}x as long as when "
                f"{where} was measured (probe by probe {lo:.2f}-{hi:.2f}x)")
        scale = ratio
        if abs(ratio - 1) > TOLERANCE and nets is not None:
            rows, space, path = nets
            scale, lo, hi = retime_nets(device, rows, space, cache_dir)
            text += (f", and {len(rows)} of the subnets of {path} {scale:.2f}x as long as "
                     f"that table says (net by net {lo:.2f}-{hi:.2f}x)")
        if abs(ratio - 1) <= TOLERANCE:
            _CHECKED[key] = Drift(ratio, text)
        elif not allow_drift:
            raise DriftError(f"{device.name}: {text}, beyond ±{TOLERANCE:.0%}: its predictions "
                             f"would be off by as much. Profile this machine again ('hwnas "
                             f"profile --device {device.name} ...') or pass --allow-drift to "
                             f"scale the predictions by {scale:.2f}")
        else:
            _CHECKED[key] = Drift(scale, text + f"; predictions scaled by {scale:.2f}",
                                  scaled=True)
    return _CHECKED[key]


class ScaledPredictor:
    """A predictor whose predictions are multiplied by a measured drift ratio."""

    def __init__(self, base, drift: Drift) -> None:
        self.base, self.drift = base, drift
        self.space, self.kind = base.space, base.kind
        self.fingerprint = getattr(base, "fingerprint", {})

    def predict(self, archs) -> np.ndarray:
        return np.asarray(self.base.predict(archs)) * self.drift.ratio

    def predict_with_uncertainty(self, archs) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.base.predict_with_uncertainty(archs)
        return np.asarray(p) * self.drift.ratio, np.asarray(s) * self.drift.ratio


def drift_scale(predictor) -> float:
    """The drift ratio ``predictor``'s predictions were scaled by (1.0 if none): what a
    latency at the table's speed is multiplied by to be in their terms."""
    return float(predictor.drift.ratio) if isinstance(predictor, ScaledPredictor) else 1.0


def table_probes(device: str, lut_dir: str | Path) -> tuple[dict | None, str]:
    """The probes stored with a device's tables (the op table's, else the subnet table's)
    and which file they came from."""
    from hwnas.lut import read_table, table_paths

    for path, kind in zip(table_paths(device, lut_dir), ("ops", "subnets")):
        if path.exists():
            return read_table(path, kind)[1].get("probes"), str(path)
    return None, str(table_paths(device, lut_dir)[0])


__all__ = ["Drift", "DriftError", "PROBES", "ProbeClock", "REFERENCES", "ReferenceClock",
           "ScaledPredictor", "TOLERANCE", "check_drift", "compare", "drift_nets", "drift_scale",
           "measure_probes", "measurement_clock", "reference_rows", "retime",
           "retime_nets", "table_probes", "time_beside_table", "time_near_table_speed",
           "timed_again_while_off"]
