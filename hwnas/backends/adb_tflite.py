"""Android CPU and mobile GPU over adb, timed by TFLite's stock ``benchmark_model``.

Each op or subnet is converted to ``.tflite`` here, pushed once, and timed on the phone
with ``benchmark_model --graph=... --num_threads=... --warmup_runs=... --num_runs=...``
(``--use_gpu=true`` for the GPU delegate), pinned with ``taskset`` where the device file
says so. Only text comes back: the ``count= ... avg= std=`` line of the timed runs (newer
builds add ``p5= median= p95=``) is parsed. With the GPU delegate the op profile shows the
whole model as one ``TfLiteGpuDelegateV2`` row, so per-op GPU latency comes from timing
each op as its own model; ``--enable_op_profiling`` is only used for fusion checks and a
profiled run is never a timed one. A timed subnet's files are deleted here and on the
phone once its row is in the table (``discard``). Subprocesses run without a shell; a
disconnected phone is retried a bounded number of times, then reported with adb's own
message.
"""

from __future__ import annotations

import importlib.util

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from hwnas.backends.base import BACKENDS, Backend, Runner, sample_input
from hwnas.convert import to_tflite
from hwnas.errors import BackendError, DeviceError

# adb's words for a phone that went away (retried), as printed by adb itself
DISCONNECTED = ("device offline", "no devices/emulators found", "device not found",
                "unauthorized", "protocol fault", "cannot connect", "connection reset")


def is_disconnect(text: str) -> bool:
    """Whether adb's output says the phone went away (rather than the command failing)."""
    low = text.lower()
    return any(w in low for w in DISCONNECTED) or re.search(r"device '[^']*' not found", low) \
        is not None

_STAT = re.compile(r"(\w+)=([-+0-9.eE]+)")


@dataclass(frozen=True)
class BenchmarkTimings:
    """The timed-run statistics of one ``benchmark_model`` call, in microseconds."""

    count: int
    avg_us: float
    std_us: float
    min_us: float | None = None
    max_us: float | None = None
    first_us: float | None = None
    median_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    init_us: float | None = None
    warmup_avg_us: float | None = None

    @property
    def typical_us(self) -> float:
        """The median where the build reports one, else the mean."""
        return self.median_us if self.median_us is not None else self.avg_us


def _stat_line(line: str) -> dict[str, float] | None:
    """``count=50 first=.. curr=.. min=.. max=.. avg=.. std=..`` (optionally p5/median/p95,
    or ``count=N curr=V(all same)``), possibly behind a logcat or summary prefix."""
    idx = line.find("count=")
    if idx < 0:
        return None
    fields = {k: float(v) for k, v in _STAT.findall(line[idx:])}
    if "count" not in fields:
        return None
    if "avg" not in fields and "curr" in fields and "(all same)" in line:
        fields.update(avg=fields["curr"], std=0.0, min=fields["curr"], max=fields["curr"],
                      median=fields["curr"])
    if "avg" not in fields and fields.get("count") == 1 and "curr" in fields:
        fields.update(avg=fields["curr"], std=0.0)
    return fields if "avg" in fields else None


def parse_benchmark_output(text: str) -> BenchmarkTimings:
    """Parse ``benchmark_model`` output (plain or logcat-prefixed).

    The tool prints one statistics line after "Running benchmark for at least N
    iterations ..." for the warm-up runs and one for the timed runs; the timed runs are the
    last such block. Raises BackendError quoting the output's tail when none is found.
    """
    blocks: list[dict[str, float]] = []
    pending = False
    init_us = warm_avg = None
    for line in text.splitlines():
        if "Running benchmark for at least" in line:
            pending = True
            continue
        if pending:
            stats = _stat_line(line)
            if stats is not None:
                blocks.append(stats)
                pending = False
        m = re.search(r"Inference timings in us: Init: ([0-9.eE+-]+), First inference: "
                      r"([0-9.eE+-]+), Warmup \(avg\): ([0-9.eE+-]+)", line)
        if m:
            init_us, warm_avg = float(m.group(1)), float(m.group(3))
    if not blocks:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise BackendError(f"benchmark_model printed no timing statistics; its output ended "
                           f"with:\n{tail}")
    s = blocks[-1]
    return BenchmarkTimings(
        count=int(s["count"]), avg_us=s["avg"], std_us=s.get("std", 0.0), min_us=s.get("min"),
        max_us=s.get("max"), first_us=s.get("first"), median_us=s.get("median"),
        p5_us=s.get("p5"), p95_us=s.get("p95"), init_us=init_us,
        warmup_avg_us=warm_avg if len(blocks) > 1 else None)


def delegation(text: str) -> str | None:
    """What ``benchmark_model`` says the GPU delegate took: ``"complete"``, ``"partial (N
    kernels)"``, ``"none"``, or None when it printed no such line."""
    for line in text.splitlines():
        if "completely executed by the delegate" in line:
            return "complete"
        m = re.search(r"partially executed by the delegate w/ (\d+) delegate kernels", line)
        if m:
            return f"partial ({m.group(1)} delegate kernels)"
        if "will not be executed by the delegate" in line:
            return "none"
    return None


def check_delegation(text: str, use_gpu: bool) -> None:
    """With the GPU delegate asked for, refuse a run the delegate did not take whole: the
    rest would have run on the phone's CPU, and the table would call it GPU."""
    if not use_gpu:
        return
    took = delegation(text)
    if took != "complete":
        said = "printed no delegation line" if took is None else f"says the delegate took {took}"
        raise BackendError(f"the GPU delegate did not run the whole model: benchmark_model "
                           f"{said}; a partly delegated model times CPU and GPU together")


_LOGCAT = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+[\w.]+\s*:\s?")


def parse_op_profile(text: str) -> list[dict[str, Any]]:
    """The "Run Order" table of the regular runs from ``--enable_op_profiling=true``:
    one dict per node (type, avg ms, share, times called, name). A GPU-delegated model
    shows a single ``TfLiteGpuDelegateV2`` row."""
    rows: list[dict[str, Any]] = []
    in_regular = False
    header: list[str] | str | None = None
    for raw in text.splitlines():
        line = _LOGCAT.sub("", raw)
        if "Profiling Info for" in line:
            in_regular = "Regular Benchmark Runs" in line
            header = None
            continue
        if not in_regular:
            continue
        if "Run Order" in line and "=" in line:
            header = "expect"
            continue
        if header == "expect" and "[node type]" in line:
            header = [h.strip() for h in re.findall(r"\[([^\]]+)\]", line)]
            continue
        if not isinstance(header, list):
            continue
        if not line.strip() or line.strip().startswith("="):
            header, in_regular = None, False  # the Run Order table ended
            continue
        sep = "\t" if "\t" in line else None
        parts = [p.strip() for p in (line.split(sep) if sep else re.split(r"\s{2,}", line))
                 if p.strip()]
        rec = dict(zip(header, parts))
        try:
            rows.append({
                "node_type": rec["node type"],
                "avg_ms": float(rec["avg ms"]),
                "share": float(rec["%"].rstrip("%")) / 100.0,
                "times_called": int(float(rec.get("times called", "1"))),
                "name": rec.get("Name", ""),
            })
        except (KeyError, ValueError):
            continue
    return rows


def benchmark_command(settings, graph: str, threads: int, warmup: int, runs: int,
                      op_profiling: bool = False, precision: str = "fp32") -> list[str]:
    """The argv of one ``benchmark_model`` run on the phone (no local shell involved).

    ``adb shell`` joins its arguments into one remote shell command line, so every
    argument is quoted for the remote shell here.
    """
    remote = []
    if settings.taskset:
        remote += ["taskset", settings.taskset]
    remote += [settings.benchmark_model, f"--graph={graph}", f"--num_threads={threads}",
               f"--warmup_runs={warmup}", f"--num_runs={runs}",
               "--warmup_min_secs=0", "--min_secs=0"]
    if settings.use_gpu:
        # never time a model the delegate only partly takes (the rest runs on the CPU)
        remote += ["--use_gpu=true", "--require_full_delegation=true"]
        # fp16 lets the delegate compute in half precision (its default); fp32 forbids it
        loss = "true" if precision == "fp16" else "false"
        remote.append(f"--gpu_precision_loss_allowed={loss}")
    if op_profiling:
        remote.append("--enable_op_profiling=true")
    return adb_prefix(settings) + ["shell", " ".join(shlex.quote(a) for a in remote)]


def adb_prefix(settings) -> list[str]:
    argv = [settings.adb]
    if settings.serial:
        argv += ["-s", settings.serial]
    return argv


def push_command(settings, local: str | Path, remote: str) -> list[str]:
    return adb_prefix(settings) + ["push", str(local), remote]


def remove_command(settings, remotes: Sequence[str]) -> list[str]:
    """Delete pushed files on the phone (``rm -f``: one never pushed is no error)."""
    return adb_prefix(settings) + ["shell", " ".join(
        ["rm", "-f", "--"] + [shlex.quote(r) for r in remotes])]


class Adb:
    """Runs adb commands with bounded retries for a disconnected phone."""

    def __init__(self, settings, runner: Callable[..., subprocess.CompletedProcess] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._run = runner or subprocess.run
        self._sleep = sleep

    def __call__(self, argv: Sequence[str], timeout: float = 600) -> str:
        last = ""
        for attempt in range(self.settings.retries):
            try:
                proc = self._run(list(argv), capture_output=True, text=True, timeout=timeout,
                                 check=False)
            except FileNotFoundError:
                raise DeviceError(f"adb not found ({self.settings.adb!r}): install Android "
                                  f"platform-tools and put adb on PATH") from None
            except subprocess.TimeoutExpired:
                last = f"timed out after {timeout:.0f} s"
                self._sleep(self.settings.retry_wait_s)
                continue
            out = (proc.stdout or "") + (proc.stderr or "")
            if proc.returncode == 0 and not is_disconnect(out):
                return out
            last = out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}"
            if not is_disconnect(out):
                raise BackendError(f"adb command failed ({' '.join(argv[:4])} ...): {last}")
            self._sleep(self.settings.retry_wait_s * (attempt + 1))
        who = self.settings.serial or "the attached device"
        raise DeviceError(f"Android device {who} is not reachable after "
                          f"{self.settings.retries} attempts; adb said: {last}")


@BACKENDS.register('adb-tflite')
class AdbTFLiteBackend(Backend):
    file_format = "tflite"
    name = "adb-tflite"
    hardware = ("android",)

    def __init__(self, device, cache_dir=None, adb: Adb | None = None) -> None:
        super().__init__(device, cache_dir)
        self.settings = device.android
        self.adb = adb or Adb(self.settings)
        self._dir_ready = False

    @classmethod
    def check(cls, device, runner=None) -> str | None:
        settings = device.android
        if runner is None and shutil.which(settings.adb) is None:
            return f"adb not found on PATH ({settings.adb!r}); install Android platform-tools"
        run = runner or subprocess.run
        try:
            out = run([settings.adb, "devices"], capture_output=True, text=True, timeout=30,
                      check=False).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"'adb devices' failed: {exc}"
        attached = [ln.split()[0] for ln in out.splitlines()[1:]
                    if ln.strip() and ln.split()[-1] == "device"]
        if settings.serial and settings.serial not in attached:
            return f"no Android device with serial {settings.serial!r} (attached: " \
                   f"{attached or 'none'})"
        if not attached:
            return "no Android device attached and authorised ('adb devices' lists none)"
        if not settings.serial and len(attached) > 1:
            return f"several Android devices attached {attached}: set android.serial"
        if importlib.util.find_spec("litert_torch") is None:
            return "litert-torch (the PyTorch->TFLite converter) is not installed " \
                   "(pip install 'hwnas[tflite-convert]')"
        return None

    @classmethod
    def max_batch(cls, device) -> int:
        # the GPU delegate takes batch 1 only ("Batch size != 1 is not supported")
        if device.android is not None and device.android.use_gpu:
            return 1
        return super().max_batch(device)

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        s = device.android
        info: dict[str, Any] = {"runtime": "tflite-benchmark_model",
                                "accelerator": "gpu-delegate" if s.use_gpu else "cpu",
                                "serial": s.serial, "taskset": s.taskset}
        if shutil.which(s.adb):
            adb = Adb(s)
            for prop, key in (("ro.product.model", "phone"), ("ro.board.platform", "soc"),
                              ("ro.build.version.release", "android")):
                try:
                    info[key] = adb(adb_prefix(s) + ["shell", "getprop", prop], 60).strip()
                except (BackendError, DeviceError):
                    info[key] = None
        return info

    def _ensure_dir(self) -> None:
        if not self._dir_ready:
            self.adb(adb_prefix(self.settings) + ["shell", "mkdir -p " +
                                                  shlex.quote(self.settings.remote_dir)])
            self._dir_ready = True

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        local = self.cache_path(key, ".tflite")
        if not local.exists():
            to_tflite(module, sample_input(input_shape), local)
        return self.load(local, input_shape, key)

    def prepare_many(self, items, advance=lambda n: None) -> list[Runner]:
        """Convert as the CPU TFLite backend does (many per conversion, cached across
        runs), then push and time each file on the phone."""
        from hwnas.backends.tflite import convert_cached

        paths = convert_cached(items, self.device, advance)
        return [self.load(path, shape, key) for path, (_, shape, key) in zip(paths, items)]

    def discard(self, keys) -> int:
        """Timed subnets' files here (as the CPU TFLite backend deletes them) and their
        pushed copies on the phone, whose storage is smaller than a workstation's."""
        from hwnas.backends.tflite import discardable_files

        local = [p for p in discardable_files(self, keys) if p.exists()]
        if local:
            self.adb(remove_command(self.settings, [self._remote(p) for p in local]))
        return self._unlink(local)

    def _remote(self, local: Path) -> str:
        return f"{self.settings.remote_dir.rstrip('/')}/{local.name}"

    def load(self, local, input_shape: tuple[int, ...], key: str = "") -> Runner:
        """Push a .tflite file to the phone and time it with benchmark_model."""
        local = Path(local)
        self._ensure_dir()
        remote = self._remote(local)
        self.adb(push_command(self.settings, local, remote))
        warmup = self.device.protocol.warmup
        info: dict[str, Any] = {"tflite": str(local), "remote": remote,
                                "warmup_inside": True, "per_call": False}

        def timed(n: int) -> np.ndarray:
            """One value per visit: benchmark_model reports statistics of its n runs, not
            each run, so this is its median of them (its mean on builds that print no
            median), and ``info["statistic"]`` says which."""
            out = self.adb(benchmark_command(self.settings, remote, self.device.threads,
                                             warmup, n, precision=self.device.precision))
            check_delegation(out, self.settings.use_gpu)
            t = parse_benchmark_output(out)
            kind = "median" if t.median_us is not None else "mean"
            info["statistic"] = f"benchmark_model's {kind} of {t.count} runs per visit"
            return np.array([t.typical_us * 1e-6])

        def run() -> None:
            timed(1)

        def op_profile() -> list[dict[str, Any]]:
            out = self.adb(benchmark_command(self.settings, remote, self.device.threads,
                                             warmup, 10, op_profiling=True))
            return parse_op_profile(out)

        info["op_profile"] = op_profile
        return Runner(run=run, time=timed, info=info)
