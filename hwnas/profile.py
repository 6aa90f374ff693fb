"""Profiling: measure every op (and sampled subnets) of a space on a device into a LUT.

Measurement protocol, the same on every backend:

1. **Build** every item (export/convert and load it in the runtime), timed as its own phase.
2. **Time** in ``rounds`` interleaved rounds over the whole set (or a window of it), each
   round in a freshly shuffled order, so slow drift of a shared machine hits every item
   alike; each visit does ``warmup`` untimed calls then ``runs`` timed ones.
3. **Summarise** each item by the median, p10/p90 and count of all its timed calls;
   a row whose spread ``(p90 - p10) / median`` exceeds ``max_spread`` is measured again
   (up to ``max_retries`` times, ``max_retries_subnets`` for subnet tables, same protocol)
   and the least noisy attempt is kept.

Resumable: every visit's samples go to a journal (``<table>.journal.parquet``) that is
rewritten atomically every two seconds; finished rows go to the table atomically.
After an interruption at any moment (kill -9 included) the same command continues from
the journal, and the final table holds every item exactly once. A table or journal
measured with another fingerprint is refused, saying what differs.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from hwnas.devices import (PROTOCOL_LIMITS, Device, device_fingerprint, fingerprint_diff,
                           load_device)
from hwnas.errors import DeviceError, LutError
from hwnas.display import progress as progress_bar
from hwnas.lut import SCHEMA_VERSION, read_table, table_paths, table_statistic, write_table
from hwnas import encoding
from hwnas.backends.base import model_key
from hwnas.ops import NetworkBuild, OpSpec, count, ops, unique_ops
from hwnas.space import Arch, SearchSpace, get_space

FLUSH_SECONDS = 2.0  # journal rewritten at most this often (at most this much work is lost)
# protocol settings that decide what a journal's samples are (max_spread and the retries
# only decide which rows are timed again, so a resume may change them)
SAMPLE_SETTINGS = ("warmup", "runs", "rounds", "window", "min_time_ms", "settle_ms", "reload",
                   "statistic")
RELOAD_GROUP = 40    # models built (converted, loaded) at once when the protocol reloads


@dataclass
class Item:
    """Something to time: an op or a subnet."""

    key: str
    row: dict[str, Any]
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    ident: str = ""  # what names its converted file: the key, plus what the key leaves out

    def __post_init__(self) -> None:
        self.ident = self.ident or self.key

    def spec(self, device: Device) -> tuple:
        """What ``Backend.prepare_many`` takes for it on ``device``: the builder, the input
        shape at the device's batch, and the key its converted file is cached under."""
        return self.build, device.input_shape(self.input_shape), model_key(self.ident, device)


@dataclass
class ProfileResult:
    """What a profiling run did and where it went."""

    path: Path
    table: pd.DataFrame
    measured: int = 0
    reused: int = 0
    build_s: float = 0.0
    timing_s: float = 0.0
    timed_s: float = 0.0  # seconds inside timed calls
    visits: int = 0       # (item, round) timings done by this run (not taken from a journal)
    discarded_bytes: int = 0  # converted subnet models deleted once timed (Backend.discard)
    notes: list[str] = field(default_factory=list)

    @property
    def timed_fraction(self) -> float:
        return self.timed_s / self.timing_s if self.timing_s > 0 else 0.0

    def summary(self, label: str) -> str:
        """One line of what ``hwnas profile`` did for a table."""
        return (f"{label}: {len(self.table)} rows in {self.path} ({self.measured} measured now, "
                f"{self.reused} already there); build {self.build_s:.1f} s, timing "
                f"{self.timing_s:.1f} s ({self.timed_fraction:.0%} inside timed calls)"
                + (f"; {self.discarded_bytes / 1e6:.0f} MB of timed subnets' converted models "
                   f"deleted" if self.discarded_bytes else ""))


class Journal:
    """Samples measured so far, by (key, attempt, round); survives any interruption."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.samples: dict[tuple[str, int, int], np.ndarray] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except Exception as exc:
            raise LutError(f"{self.path}: unreadable profiling journal ({exc}); delete it to "
                           f"start over") from None
        import json

        meta = json.loads((table.schema.metadata or {}).get(b"hwnas", b"{}"))
        diff = fingerprint_diff(meta.get("fingerprint", {}), self.meta["fingerprint"])
        if diff:
            raise LutError(f"cannot resume from {self.path}: it was measured with another "
                           f"fingerprint ({'; '.join(diff)}); delete it or profile into "
                           f"another --out folder")
        then, now = meta.get("protocol") or {}, self.meta.get("protocol") or {}
        changed = [f"{k}: {then[k]!r} vs {now.get(k)!r}" for k in SAMPLE_SETTINGS
                   if k in then and then[k] != now.get(k)]
        if changed:
            raise LutError(f"cannot resume from {self.path}: its samples were timed under "
                           f"another protocol ({'; '.join(changed)}); delete it, profile into "
                           f"another --out folder, or put the device's protocol back")
        df = table.to_pandas()
        for key, attempt, rnd, s in zip(df["key"], df["attempt"], df["round"], df["samples_ms"]):
            self.samples.setdefault((key, int(attempt), int(rnd)), np.asarray(s, dtype=float))

    @staticmethod
    def stored_meta(path: Path) -> dict[str, Any]:
        """The metadata an interrupted run's journal was written with (its calibration
        probes, any drift it was resumed across); {} without a readable journal."""
        import json

        import pyarrow.parquet as pq

        try:
            return json.loads((pq.read_schema(path).metadata or {}).get(b"hwnas", b"{}"))
        except Exception:  # no journal, or an unreadable one (reported when it is loaded)
            return {}

    def has(self, key: str, attempt: int, rnd: int) -> bool:
        return (key, attempt, rnd) in self.samples

    def add(self, key: str, attempt: int, rnd: int, samples_ms: np.ndarray) -> None:
        self.samples[(key, attempt, rnd)] = np.asarray(samples_ms, dtype=float)

    def attempt_samples(self, key: str, attempt: int) -> np.ndarray:
        parts = [v for (k, a, _), v in self.samples.items() if k == key and a == attempt]
        return np.concatenate(parts) if parts else np.zeros(0)

    def drop(self, keys: Iterable[str]) -> None:
        keys = set(keys)
        self.samples = {k: v for k, v in self.samples.items() if k[0] not in keys}

    def flush(self) -> None:
        if not self.samples:
            self.path.unlink(missing_ok=True)
            return
        df = pd.DataFrame({
            "key": [k[0] for k in self.samples], "attempt": [k[1] for k in self.samples],
            "round": [k[2] for k in self.samples],
            "samples_ms": [v.tolist() for v in self.samples.values()],
        })
        write_table(df, self.path, {**self.meta, "kind": "journal"})


def statistic_label(runner, protocol) -> str:
    """What a row's ``latency_ms`` is: the protocol's statistic of per-call times, or of
    the one value per visit of a runtime that reports only statistics of its runs."""
    each = runner.info.get("statistic")
    return (f"{protocol.statistic} of per-call times" if each is None
            else f"{protocol.statistic} across visits of {each}")


def summarize(samples_ms: np.ndarray, statistic: str = "median") -> dict[str, float]:
    """The latency (``statistic``: median or p10), p10, p90, spread (of the median) and
    count of timed calls (ms)."""
    med = float(np.median(samples_ms))
    p10, p90 = (float(v) for v in np.percentile(samples_ms, [10, 90]))
    return {"latency_ms": p10 if statistic == "p10" else med, "p10_ms": p10, "p90_ms": p90,
            "spread": (p90 - p10) / med if med > 0 else float("inf"),
            "count": int(samples_ms.size)}


def least_busy_cores(n: int, allowed: Sequence[int], interval_s: float = 0.2) -> list[int]:
    """The ``n`` cores of ``allowed`` that were idle the longest over ``interval_s``
    (from /proc/stat; the first ``n`` where it cannot be read)."""
    def idle() -> dict[int, int]:
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    name, *fields = line.split()
                    if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 5:
                        out[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait
        except (OSError, ValueError):
            return {}
        return out

    before = idle()
    time.sleep(interval_s)
    after = idle()
    cores = sorted(allowed)
    if not before or not after:
        return cores[:n]
    return sorted(sorted(cores, key=lambda c: -(after.get(c, 0) - before.get(c, 0)))[:n])


@contextlib.contextmanager
def pinned(cores: Sequence[int] | str | None, threads: int = 1):
    """Pin this process to ``cores`` for the duration (Linux), then restore; ``"auto"``:
    to the ``threads`` least busy of the cores it may use."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    if cores == "auto":
        cores = least_busy_cores(threads, before) if threads < len(before) else sorted(before)
    try:
        os.sched_setaffinity(0, set(cores))
    except OSError as exc:
        raise DeviceError(f"cannot pin to cores {sorted(cores)} ({exc.strerror}); this machine "
                          f"has {sorted(before)}") from None
    # PyTorch's own threads (the exporters and converters run the model) would otherwise
    # outnumber the cores and spin against each other: 90 ONNX exports took 150 s, not 30
    import torch

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(min(torch_threads, len(cores)))
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        os.sched_setaffinity(0, before)


def settle(runner, protocol) -> None:
    """Run ``runner`` untimed for ``settle_ms`` before a measurement starts.

    A core that was idle runs slower for its first 100-200 ms of work (here: a 0.17 ms
    net measured 0.26 ms after a one-second pause, and 0.17 ms after 200 ms of load), so a
    short measurement after a pause (an export, a search's check) would time the ramp-up.
    Not done where one call is a whole remote benchmark run."""
    if not protocol.settle_ms or not runner.info.get("per_call", True):
        return
    end = time.perf_counter() + protocol.settle_ms / 1e3
    while time.perf_counter() < end:
        runner.run()


def pools_attempts(protocol) -> bool:
    """Whether a row re-measured for noise is the statistic of all its attempts' calls
    (the p10: other load only slows calls down, so more calls find the calm speed more
    surely) rather than of its least noisy attempt (the median). On a host in two speed
    modes, the least noisy of two attempts picked whichever mode one attempt stayed in:
    60 subnets timed so twice agreed within ±10% for 45% of them on its p10, 78% on the
    p10 of both attempts' calls. There every p10 row stays above ``max_spread`` and spends
    every retry; 1, 2 and 3 pooled attempts agreed with an independent reference within
    ±10% for 75%, 89% and 95% of 150 subnets (docs/architecture.md)."""
    return protocol.statistic == "p10"


def timed_visit(runner, protocol) -> np.ndarray:
    """One visit of a prepared model: ``warmup`` untimed calls, then ``runs`` timed ones,
    then more until the timed calls add up to ``min_time_ms`` (so a net of 0.1 ms gets
    as many calls as its timer noise needs). Seconds of each timed call."""
    if protocol.warmup and not runner.info.get("warmup_inside"):
        runner.time(protocol.warmup)
    samples = runner.time(protocol.runs)
    if protocol.min_time_ms and runner.info.get("per_call", True):
        spent = float(samples.sum()) * 1e3
        if 0 < spent < protocol.min_time_ms:
            per_call = max(float(np.median(samples)) * 1e3, 1e-6)
            more = min(int(np.ceil((protocol.min_time_ms - spent) / per_call)),
                       PROTOCOL_LIMITS["runs"])
            if more > 0:
                samples = np.concatenate([samples, runner.time(more)])
    return samples


class Profiler:
    """Runs the measurement protocol for a device into one table."""

    def __init__(self, device: Device | str, space: SearchSpace | str, path: Path,
                 kind: str, cache_dir: str | Path | None = None, progress: bool = True,
                 allow_drift: bool = False) -> None:
        from hwnas.backends import get_backend

        self.device = load_device(device)
        self.space = get_space(space)
        self.path = Path(path)
        self.kind = kind
        self.protocol = self.device.protocol
        self.progress = progress
        self.calibrate = True  # time the calibration probes into the table (hwnas.probe)
        self.allow_drift = allow_drift  # resume across a drift of the probes, recorded
        self.fingerprint = device_fingerprint(self.device)
        self.meta = {"kind": kind, "fingerprint": self.fingerprint,
                     "space": self.space.to_dict(), "device": self.device.to_dict(),
                     "protocol": self.device.protocol.__dict__}
        # converted models are kept beside the tables they were timed for
        self.backend = get_backend(self.device, cache_dir or self.path.parent / ".cache" /
                                   self.device.name)

    def _existing(self) -> tuple[pd.DataFrame | None, dict]:
        if not self.path.exists():
            return None, {}
        df, meta = read_table(self.path, self.kind)
        diff = fingerprint_diff(meta.get("fingerprint") or {}, self.fingerprint)
        if diff:
            raise LutError(f"cannot resume or extend {self.path}: it was measured with another "
                           f"fingerprint ({'; '.join(diff)}); profile into another --out "
                           f"folder or delete it")
        have = table_statistic(meta)
        if have != self.protocol.statistic:
            raise LutError(f"cannot resume or extend {self.path}: its rows hold the {have} of "
                           f"their timed calls, the device's protocol now the "
                           f"{self.protocol.statistic}; profile into another --out folder or "
                           f"delete it")
        space = SearchSpace.from_dict(meta["space"]) if "space" in meta else None
        if space is not None and space.id != self.space.id:
            raise LutError(f"cannot extend {self.path}: it holds space {space.name!r}, not "
                           f"{self.space.name!r}")
        return df, meta

    def _calibrate(self, stored: dict | None, result: ProfileResult) -> bool:
        """Time the calibration probes (``hwnas.probe``) into the table's metadata (True:
        timed now, not read from the table or journal being extended); a table
        being extended must have been measured at this machine's present speed, unless
        ``allow_drift``: then the drift is recorded in the table (``resumed_across_drift``)
        and in the result's notes, so nobody takes the table for one speed."""
        from hwnas.probe import TOLERANCE, measure_probes, retime

        if stored and stored.get("ms"):
            ratio = retime(stored, self.device, backend=self.backend)[1][0]
            if abs(ratio - 1) > TOLERANCE:
                text = (f"this machine runs the calibration probes {ratio:.2f}x as long as "
                        f"when the rows of {self.path} were measured")
                if not self.allow_drift:
                    raise LutError(f"cannot resume or extend {self.path}: {text}, so the table "
                                   f"would mix two speeds; profile into another --out folder, "
                                   f"delete it, or pass --allow-drift to mix them (recorded "
                                   f"in the table)")
                self.meta["resumed_across_drift"] = [
                    *self.meta.get("resumed_across_drift", []),
                    {"ratio": round(ratio, 4), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
                result.notes.append(f"{text}; resumed anyway (--allow-drift): the table now "
                                    f"mixes two speeds, recorded as resumed_across_drift")
            self.meta["probes"] = stored
            return False
        self.meta["probes"] = measure_probes(self.device, backend=self.backend)
        return True

    def _close_probes(self, result: ProfileResult) -> None:
        """Time the probes again at the end of a profile that timed them at its start, and
        keep each probe's faster timing. Timed once, the probes can land in one of the
        host's slow windows (40-50% slower for seconds); the table then looks slower than
        the machine is, and a later drift check scales every prediction down by as much
        (a quickstart's TFLite prediction went from x1.01 to x1.21 of measured that way).
        The drift check keeps the fastest of up to three timings too."""
        from hwnas.probe import measure_probes

        start = self.meta["probes"]
        end = measure_probes(self.device, backend=self.backend)
        self.meta["probes"] = {
            **start, "ms": {k: min(v, end["ms"].get(k, v)) for k, v in start["ms"].items()},
            "timed": "at the start and at the end of the profile; each probe's faster",
            "start_ms": start["ms"], "end_ms": end["ms"]}
        write_table(result.table, self.path, self.meta)

    def run(self, items: Sequence[Item]) -> ProfileResult:
        existing, existing_meta = self._existing()
        if "sampling" in existing_meta:  # kept by a run that does not sample (measure_subnets)
            self.meta.setdefault("sampling", existing_meta["sampling"])
        done = set(existing["key"]) if existing is not None else set()
        pending = [it for it in dict((it.key, it) for it in items).values() if it.key not in done]
        result = ProfileResult(self.path, existing if existing is not None else pd.DataFrame(),
                               reused=len(items) - len(pending))
        if not pending:
            return result
        journal_path = journal_of(self.path)
        if self.calibrate:
            interrupted = Journal.stored_meta(journal_path)  # newer than the table's
            drifts = interrupted.get("resumed_across_drift") or \
                existing_meta.get("resumed_across_drift")
            if drifts:
                self.meta["resumed_across_drift"] = drifts
            fresh_probes = self._calibrate(existing_meta.get("probes")
                                           or interrupted.get("probes"), result)
        journal = Journal(journal_path, self.meta)
        window = self.protocol.window or len(pending)
        with pinned(self.device.cpu_affinity, self.device.threads), \
                progress_bar(self.progress, eta=True) as bar:
            for start in range(0, len(pending), window):
                chunk = pending[start:start + window]
                rows = self._measure(chunk, journal, bar, result)
                table = pd.concat([result.table, pd.DataFrame(rows)], ignore_index=True) \
                    if len(result.table) else pd.DataFrame(rows)
                write_table(table, self.path, self.meta)
                result.table = table
                journal.drop(r["key"] for r in rows)
                journal.flush()
                result.measured += len(rows)
                if self.kind == "subnets":  # timed and stored: their models are not needed
                    result.discarded_bytes += self.backend.discard(
                        [it.spec(self.device)[2] for it in chunk])
            if self.calibrate and fresh_probes:
                self._close_probes(result)
        return result

    def _measure(self, items: Sequence[Item], journal: Journal, bar, result: ProfileResult
                 ) -> list[dict[str, Any]]:
        p = self.protocol
        t0 = time.perf_counter()
        build_task = bar.add_task(f"build {self.device.backend}", total=len(items))
        dev = self.device
        specs = {it.key: it.spec(dev) for it in items}
        runners, statistic = {}, {}
        # with reload, converted files stay on disk and at most 40 models are loaded at once
        step = RELOAD_GROUP if p.reload else len(specs)
        keys = list(specs)
        for start in range(0, len(keys), step):
            group = keys[start:start + step]
            built = self.backend.prepare_many([specs[k] for k in group],
                                              lambda n: bar.advance(build_task, n))
            for key, runner in zip(group, built):
                statistic[key] = statistic_label(runner, p)
                if p.reload:
                    runner.close()
                else:
                    runners[key] = runner

        def visit(key: str, time_it: bool = True) -> np.ndarray | None:
            runner = runners.get(key) or self.backend.prepare_many([specs[key]])[0]
            statistic[key] = statistic_label(runner, p)
            samples = timed_visit(runner, p) if time_it else settle(runner, p)
            if p.reload:
                runner.close()
            return samples

        result.build_s += time.perf_counter() - t0

        t1 = time.perf_counter()
        best: dict[str, dict[str, Any]] = {}
        todo = [it.key for it in items]
        visit(todo[0], time_it=False)  # settle
        retries = p.max_retries if self.kind == "ops" else p.max_retries_subnets
        pooled = pools_attempts(p)
        for attempt in range(retries + 1):
            if not todo:
                break
            label = "time" if attempt == 0 else f"re-time (noisy, try {attempt})"
            task = bar.add_task(label, total=len(todo) * p.rounds)
            last_flush = time.perf_counter()
            for rnd in range(p.rounds):
                order = list(todo)
                np.random.default_rng([p.seed, attempt, rnd]).shuffle(order)
                for key in order:
                    if not journal.has(key, attempt, rnd):
                        samples = visit(key)
                        result.timed_s += float(samples.sum())
                        journal.add(key, attempt, rnd, samples * 1e3)
                        result.visits += 1
                        if time.perf_counter() - last_flush >= FLUSH_SECONDS:
                            journal.flush()
                            last_flush = time.perf_counter()
                    bar.advance(task)
            journal.flush()
            for key in todo:
                if pooled:
                    samples = np.concatenate([journal.attempt_samples(key, a)
                                              for a in range(attempt + 1)])
                    best[key] = {**summarize(samples, p.statistic), "attempts": attempt + 1}
                    continue
                stats = summarize(journal.attempt_samples(key, attempt), p.statistic)
                stats["attempts"] = attempt + 1
                if key not in best or stats["spread"] < best[key]["spread"]:
                    best[key] = stats
            todo = [k for k in todo if best[k]["spread"] > p.max_spread]
        for r in runners.values():
            r.close()
        result.timing_s += time.perf_counter() - t1
        noisy = [k for k in best if best[k]["spread"] > p.max_spread]
        if noisy:
            result.notes.append(f"{len(noisy)} row(s) stayed above spread "
                                f"{p.max_spread:g} after {retries} re-measurements")
        by_key = {it.key: it for it in items}
        return [{**by_key[k].row, "batch": dev.batch, **best[k], "statistic": statistic[k],
                 "measured_at": pd.Timestamp.now(tz="UTC")} for k in by_key]


# ----------------------------------------------------------------------- public API
def op_items(op_list: Iterable[OpSpec]) -> list[Item]:
    return [Item(op.key, op.row(), op.build, op.input_shape) for op in op_list]


def subnet_items(archs: Iterable[Arch], space: SearchSpace) -> list[Item]:
    items = []
    for arch in archs:
        c = count(arch, space)
        row = {"key": arch.key, "arch": arch.to_json(), "name": space.arch_name(arch),
               "r": arch.r, "macs": c.macs, "params": c.params}
        # an arch's key is its JSON; two spaces (widths) share archs, not networks
        items.append(Item(arch.key, row, NetworkBuild(tuple(ops(arch, space))),
                          (1, space.in_channels, arch.r, arch.r), f"{space.id}:{arch.key}"))
    return items


SAMPLINGS = ("mixed", "uniform", "spread")


def sample_subnets(space: SearchSpace, n: int, seed: int = 0,
                   resolutions: Sequence[int] | None = None,
                   sampling: str = "uniform") -> list[Arch]:
    """``n`` distinct archs: always the smallest and the largest, the rest by ``sampling``:
    ``uniform`` (every choice independent, OFA's sampler), ``spread`` (sizes spread evenly
    from the smallest to the largest, :func:`hwnas.encoding.sample_spread`) or ``mixed``
    (the two in turn: the middle of the space where most nets are, and its ends, where a
    latency-bound search goes). Over ``resolutions`` when given; the first ``m`` of ``n``
    are the ``m`` that ``n = m`` gives, so a table extended with the same seed keeps its
    rows."""
    if sampling not in SAMPLINGS:
        raise LutError(f"unknown subnet sampling {sampling!r}; allowed: {list(SAMPLINGS)}")
    res = sorted(resolutions) if resolutions else list(space.resolutions)
    r_genes = encoding.resolution_genes(space, res)
    lo, hi = space.smallest(), space.largest()
    archs = {space.at_resolution(lo, res[0]): None, space.at_resolution(hi, res[-1]): None}
    rng = np.random.default_rng(seed)
    turn = 0
    while len(archs) < n:
        if sampling == "spread" or (sampling == "mixed" and turn % 2):
            archs[space.decode(encoding.sample_spread(space, 1, rng, r_genes)[0])] = None
        else:
            a = space.sample(1, rng)[0]
            archs[space.at_resolution(a, int(rng.choice(res)))] = None
        turn += 1
    return list(archs)[:max(n, 2)]


def journal_of(path: Path) -> Path:
    """Where an interrupted run into the table at ``path`` keeps its samples."""
    return path.with_name(path.name.replace(".parquet", "") + ".journal.parquet")


def table_sampling(path: Path) -> str:
    """How the subnets of the table at ``path`` (or of its interrupted first run) were
    sampled: what it records, ``uniform`` for one from before the record (the only
    sampler then), ``mixed`` where there is none yet."""
    if Path(path).exists():
        return read_table(path, "subnets")[1].get("sampling", "uniform")
    journal = journal_of(Path(path))
    if journal.exists():
        return Journal.stored_meta(journal).get("sampling", "uniform")
    return "mixed"


def profile(device: Device | str, space: SearchSpace | str = "default",
            resolutions: Sequence[int] | None = None, subnets: int = 0, seed: int = 0,
            out_dir: str | Path = "lut", cache_dir: str | Path | None = None,
            op_list: Sequence[OpSpec] | None = None, progress: bool = True,
            batch: int | None = None, allow_drift: bool = False, sampling: str | None = None
            ) -> tuple[ProfileResult, ProfileResult | None]:
    """Measure every unique op of ``space`` (at ``resolutions``) on ``device`` into
    ``<out_dir>/<device>.parquet`` and, with ``subnets``, that many sampled subnets into
    ``<out_dir>/<device>.subnets.parquet``. Resumes where an earlier run stopped.
    ``batch`` overrides the device's batch size (the device is then ``<device>-b<batch>``,
    and so are its tables). ``allow_drift`` resumes a table although this machine now runs
    the calibration probes at another speed (recorded in the table). ``sampling`` picks
    the subnets (:func:`sample_subnets`; default: the one the subnet table records, so
    an extended table keeps its rows, else ``mixed``)."""
    device = load_device(device, batch)
    space = get_space(space)
    if resolutions:
        bad = [r for r in resolutions if r not in space.resolutions]
        if bad:
            raise LutError(f"resolution(s) {bad} are not in space {space.name!r}; allowed: "
                           f"{list(space.resolutions)}")
    op_path, subnet_path = table_paths(device.name, out_dir)
    if subnets:  # drawn (and a bad sampling refused) before anything is timed
        sampling = sampling or table_sampling(subnet_path)
        archs = sample_subnets(space, subnets, seed, resolutions, sampling)
    targets = list(op_list) if op_list is not None else unique_ops(space, resolutions)
    ops_result = Profiler(device, space, op_path, "ops", cache_dir, progress, allow_drift).run(
        op_items(targets))
    subnet_result = None
    if subnets:
        profiler = Profiler(device, space, subnet_path, "subnets", cache_dir, progress,
                            allow_drift)
        profiler.meta["sampling"] = sampling
        subnet_result = profiler.run(subnet_items(archs, space))
    return ops_result, subnet_result


def time_runner(runner, protocol, clock=None) -> dict[str, float]:
    """Time one prepared model with the profiling protocol (``rounds`` of ``warmup`` +
    ``runs`` calls, summarised over all timed calls, re-measured while noisier than
    ``max_spread``): what the profiler does for each row, for a single model file.

    With ``clock`` (a :class:`hwnas.probe.ProbeClock`), the calibration probes are timed
    after every round, and the result also holds ``drift`` (median over rounds of how
    much slower the probes ran than the table recorded) and ``at_table_speed_ms`` (median
    over rounds of the round's statistic divided by that round's drift): the latency the
    table's machine speed would have given."""
    best: dict[str, float] | None = None
    settle(runner, protocol)
    pooled = pools_attempts(protocol)
    samples, drifts = [], []
    for attempt in range(protocol.max_retries + 1):
        if not pooled:
            samples, drifts = [], []
        for _ in range(protocol.rounds):
            samples.append(timed_visit(runner, protocol) * 1e3)
            if clock is not None:
                drifts.append(clock.drift())
        stats = summarize(np.concatenate(samples), protocol.statistic)
        stats["attempts"] = attempt + 1
        stats["statistic"] = statistic_label(runner, protocol)
        if drifts:
            per_round = [summarize(s, protocol.statistic)["latency_ms"] / d
                         for s, d in zip(samples, drifts)]
            stats["drift"] = float(np.median(drifts))
            stats["at_table_speed_ms"] = float(np.median(per_round))
        if best is None or pooled or stats["spread"] < best["spread"]:
            best = stats
        if best["spread"] <= protocol.max_spread:
            break
    return best


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """``fn(*args)`` run in a newly started Python process, and where it ran.

    Measured here: a process that has trained or searched runs the same ONNX Runtime
    models 7-14% slower than a new one (4 archs of the small space: 0.87-0.93x their
    predictions in a new process, 1.07-1.14x in the process right after a search, still
    1.06-1.12x minutes later, 0.91-0.98x in a process started then), and the tables were
    timed by a process that had done neither. So a check of a table's prediction (the
    search's verification, an export's measurement) times its models in a new process.
    ``fn`` must be importable (a module-level function) and its arguments picklable; where
    a process cannot be started (a calling script without a ``__main__`` guard) or the
    arguments cannot be sent, it runs here and the second value says so. A
    :class:`~hwnas.errors.HwnasError` raised by ``fn`` is raised here with its message."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        pickle.dumps((fn, args))
    except Exception as exc:  # a module defined in a notebook, say
        return _unwrap(_guarded(fn, *args)), f"this process (arguments not sendable: {exc})"
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return _unwrap(pool.submit(_guarded, fn, *args).result()), "a new process"
    except BrokenProcessPool as exc:
        return (_unwrap(_guarded(fn, *args)),
                f"this process (a new one could not be started: {exc})")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _guarded(fn, *args):
    """Run ``fn``; an hwnas error comes back as (class path, message): hwnas's error
    classes take other arguments than their message, so they are not sent pickled."""
    from hwnas.errors import HwnasError

    try:
        return ("ok", fn(*args))
    except HwnasError as exc:
        return ("error", type(exc).__module__, type(exc).__qualname__, str(exc),
                getattr(exc, "exit_code", 2))


def _unwrap(answer):
    if answer[0] == "ok":
        return answer[1]
    import importlib

    from hwnas.errors import HwnasError

    _, module, name, message, code = answer
    try:
        exc = getattr(importlib.import_module(module), name)(message)
    except Exception:  # a class that takes more than its message
        exc = HwnasError(message)
    exc.exit_code = code
    raise exc


def measure_subnets(device: Device | str, archs: Sequence[Arch], space: SearchSpace | str,
                    out_dir: str | Path, cache_dir: str | Path | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Measure ``archs`` end to end with the profiling protocol into
    ``<out_dir>/<device>.subnets.parquet`` (resumable, reused when already there);
    returns one row per arch, in the order given."""
    device, space = load_device(device), get_space(space)
    _, path = table_paths(device.name, out_dir)
    res = Profiler(device, space, path, "subnets", cache_dir, progress).run(
        subnet_items(archs, space))
    return res.table.set_index("key").loc[[a.key for a in archs]].reset_index()


__all__ = ["Item", "Journal", "ProfileResult", "Profiler", "SAMPLINGS", "in_fresh_process",
           "least_busy_cores", "measure_subnets", "pinned", "profile", "sample_subnets",
           "settle", "table_sampling", "time_runner", "timed_visit", "summarize",
           "SCHEMA_VERSION"]
