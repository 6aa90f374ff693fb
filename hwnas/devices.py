"""Device files: which runtime, on which hardware, with which settings.

A device is a small YAML file in ``devices/`` (a new device is a new file). Every command's
``--device`` takes a path or the name of a file there. Loading validates every field and
names the bad one; :func:`check_usable` says whether this machine can run the device and,
if not, exactly what is missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence


from hwnas.errors import DeviceError, read_yaml

if TYPE_CHECKING:
    from hwnas.display import Table

HARDWARE = ("cpu", "cuda", "android")
PRECISIONS = ("fp32", "fp16")
MAX_THREADS = 1024
MAX_BATCH = 4096
AUTO = "auto"  # cpu_affinity: the least busy cores when measuring starts
# Upper bounds of the measurement protocol (beyond them a table would take days, or the
# sample arrays more memory than any machine has).
PROTOCOL_LIMITS = {"warmup": 10_000, "runs": 100_000, "rounds": 1_000, "max_retries": 100,
                   "max_retries_subnets": 100,
                   "window": 1_000_000, "min_time_ms": 60_000, "settle_ms": 60_000}
STATISTICS = ("median", "p10")  # what a row's latency_ms is, of its timed values
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

REPO_DEVICES = Path(__file__).resolve().parents[1] / "devices"


@dataclass(frozen=True)
class MeasureProtocol:
    """How each op or subnet is timed (see docs/architecture.md, 'Measurement protocol')."""

    warmup: int = 2          # untimed calls before each visit's timed calls
    runs: int = 30           # timed calls per visit
    rounds: int = 5          # interleaved rounds over the whole set, each in shuffled order
    max_spread: float = 0.2  # (p90 - p10) / median above this: measure the row again
    max_retries: int = 2     # how many times a noisy row is measured again
    max_retries_subnets: int = 2  # the same for subnet rows: the predictor's ground truth, few,
                                  # and calm unless the host is (TFLite ops are noisy always)
    window: int = 0          # items interleaved together (0: all); subnets use a window
    seed: int = 0            # shuffling seed
    min_time_ms: float = 0.0  # each visit times calls until at least this long (tiny nets)
    settle_ms: float = 300.0  # untimed calls before timing starts, until the CPU is up to speed
    reload: bool = False     # load each model for its visit only (big batches: memory), so
                             # every round still visits every item
    statistic: str = "median"  # a row's latency: "median" of its timed values, or "p10" where
                               # other load only ever slows calls down (long batched calls)


@dataclass(frozen=True)
class AndroidSettings:
    """Where and how ``benchmark_model`` runs on a phone over adb."""

    serial: str | None = None                      # adb serial; None: the only device attached
    remote_dir: str = "/data/local/tmp/hwnas"
    benchmark_model: str = "/data/local/tmp/benchmark_model"
    use_gpu: bool = False
    taskset: str | None = None                     # CPU mask for the big cores, e.g. "f0"
    retries: int = 3                               # for a disconnected device
    retry_wait_s: float = 2.0
    adb: str = "adb"


@dataclass(frozen=True)
class Device:
    """A validated device file."""

    name: str
    backend: str
    hardware: str
    threads: int = 1
    batch: int = 1                              # images per inference (1: latency-bound)
    precision: str = "fp32"
    execution_provider: str | None = None      # onnxruntime
    # pin the measuring process to these cores, or "auto": the least busy ones
    cpu_affinity: tuple[int, ...] | str | None = None
    cuda_device: int = 0
    workspace_mb: int = 1024                    # tensorrt builder workspace
    description: str = ""
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)
    android: AndroidSettings | None = None
    path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        if isinstance(out["cpu_affinity"], tuple):
            out["cpu_affinity"] = list(out["cpu_affinity"])
        return out

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``shape`` (NCHW) with this device's batch."""
        return (self.batch,) + tuple(shape[1:])

    def with_batch(self, batch: int) -> "Device":
        """This device at another batch size, named ``<name>-b<batch>`` (its tables and
        predictor are then that name's). Above batch 1 each model is loaded for its visit
        only (``protocol.reload``): a loaded session keeps its activation memory, and the
        default space's 449 ops at batch 32 held 24 GB loaded together."""
        if batch == self.batch:
            return self
        stem = batch_stem(self.name, self.batch)
        protocol = self.protocol if batch == 1 or self.protocol.reload else \
            dataclasses.replace(self.protocol, reload=True)
        return check_batch(dataclasses.replace(
            self, batch=batch, name=stem if batch == 1 else f"{stem}-b{batch}",
            protocol=protocol), self.path or self.name)


_TOP_KEYS = {f.name for f in dataclasses.fields(Device)} - {"path"}


def _fail(where: str, msg: str) -> DeviceError:
    return DeviceError(f"{where}: {msg}")


def _typed(where: str, key: str, value: Any, kind: type | tuple, what: str) -> Any:
    if isinstance(value, bool) and kind is not bool:  # YAML's true is not a number
        raise _fail(where, f"field {key!r} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise _fail(where, f"field {key!r} must be {what}, got {type(value).__name__} {value!r}")
    return value


def _section(where: str, name: str, raw: Any, cls: type) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise _fail(where, f"field {name!r} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))} in {name!r}; allowed: "
                           f"{sorted(fields)}")
    values = {}
    defaults = cls()
    for key, value in raw.items():
        default = getattr(defaults, key)
        label = f"{name}.{key}"
        if isinstance(default, bool):
            values[key] = _typed(where, label, value, bool, "true or false")
        elif isinstance(default, int):
            values[key] = _typed(where, label, value, int, "an integer")
            if values[key] < 0:
                raise _fail(where, f"field {label!r} must be >= 0, got {value}")
        elif isinstance(default, float):
            values[key] = float(_typed(where, label, value, (int, float), "a number"))
            if values[key] < 0:
                raise _fail(where, f"field {label!r} must be >= 0, got {value}")
        else:  # optional strings
            if value is not None:
                _typed(where, label, value, str, "a string")
            values[key] = value
    return cls(**values)


def parse_device(data: Any, where: str = "device") -> Device:
    """Validate a device description (the parsed YAML); errors name the bad field."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"a device file must be a YAML mapping, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(map(str, unknown))}; allowed: "
                           f"{sorted(_TOP_KEYS)}")
    for key in ("name", "backend", "hardware"):
        if key not in data:
            raise _fail(where, f"missing required field {key!r}")
    name = _typed(where, "name", data["name"], str, "a string")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise _fail(where, f"field 'name' must be a file-safe word, got {name!r}")
    from hwnas.backends import BACKENDS

    backend = data["backend"]
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise _fail(where, f"field 'backend' = {backend!r} is not known; allowed: "
                           f"{BACKENDS.choices()}")
    hardware = data["hardware"]
    if hardware not in HARDWARE:
        raise _fail(where, f"field 'hardware' = {hardware!r} is not known; allowed: "
                           f"{list(HARDWARE)}")
    runs_on = BACKENDS.get(backend).hardware
    if hardware not in runs_on:
        raise _fail(where, f"backend {backend!r} cannot run on hardware {hardware!r}; it runs on "
                           f"{list(runs_on)}")
    threads = _typed(where, "threads", data.get("threads", 1), int, "an integer")
    if not 1 <= threads <= MAX_THREADS:
        raise _fail(where, f"field 'threads' must be in 1..{MAX_THREADS}, got {threads}")
    batch = _typed(where, "batch", data.get("batch", 1), int, "an integer")
    if not 1 <= batch <= MAX_BATCH:
        raise _fail(where, f"field 'batch' must be in 1..{MAX_BATCH}, got {batch}")
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise _fail(where, f"field 'precision' = {precision!r} is not allowed; allowed: "
                           f"{list(PRECISIONS)}")
    if precision == "fp16" and hardware == "cpu":
        raise _fail(where, "precision 'fp16' needs a GPU ('cuda' or 'android'); CPU runtimes "
                           "here compute fp32")
    ep = data.get("execution_provider")
    if backend == "onnxruntime":
        ep = ep or ORT_PROVIDERS[hardware]
        if ep != ORT_PROVIDERS[hardware]:
            raise _fail(where, f"field 'execution_provider' = {ep!r} does not match hardware "
                               f"{hardware!r}; use {ORT_PROVIDERS[hardware]!r}")
    elif ep is not None:
        raise _fail(where, "field 'execution_provider' is only for backend 'onnxruntime'")
    affinity = data.get("cpu_affinity")
    if affinity == AUTO:
        if hardware != "cpu":
            raise _fail(where, "cpu_affinity 'auto' is for hardware 'cpu'")
    elif affinity is not None:
        if not isinstance(affinity, list) or not affinity or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in affinity):
            raise _fail(where, f"field 'cpu_affinity' must be a non-empty list of core numbers "
                               f"or 'auto', got {affinity!r}")
        affinity = tuple(affinity)
    cuda_device = _typed(where, "cuda_device", data.get("cuda_device", 0), int, "an integer")
    workspace = _typed(where, "workspace_mb", data.get("workspace_mb", 1024), int, "an integer")
    if workspace < 1:
        raise _fail(where, f"field 'workspace_mb' must be >= 1, got {workspace}")
    description = data.get("description", "") or ""
    _typed(where, "description", description, str, "a string")
    protocol = _section(where, "protocol", data.get("protocol"), MeasureProtocol)
    if protocol.runs < 1 or protocol.rounds < 1:
        raise _fail(where, "protocol.runs and protocol.rounds must be >= 1")
    if protocol.statistic not in STATISTICS:
        raise _fail(where, f"field 'protocol.statistic' = {protocol.statistic!r} is not allowed; "
                           f"allowed: {', '.join(STATISTICS)}")
    for key, most in PROTOCOL_LIMITS.items():
        if getattr(protocol, key) > most:
            raise _fail(where, f"field 'protocol.{key}' = {getattr(protocol, key)} is more than "
                               f"{most:,}; allowed: 0..{most:,} (runs and rounds from 1)")
    android = None
    if backend == "adb-tflite":
        android = _section(where, "android", data.get("android"), AndroidSettings)
        if android.retries < 1:
            raise _fail(where, "field 'android.retries' must be >= 1")
        if android.taskset is not None and not all(
                c in "0123456789abcdefABCDEF" for c in android.taskset):
            raise _fail(where, f"field 'android.taskset' must be a hex CPU mask like 'f0', got "
                               f"{android.taskset!r}")
    elif data.get("android") is not None:
        raise _fail(where, "field 'android' is only for backend 'adb-tflite'")
    device = Device(name=name, backend=backend, hardware=hardware, threads=threads,
                    batch=batch, precision=precision, execution_provider=ep,
                    cpu_affinity=affinity, cuda_device=cuda_device, workspace_mb=workspace,
                    description=description, protocol=protocol, android=android)
    return check_batch(device, where)


def check_batch(device: Device, where: str) -> Device:
    """``device`` if its runtime can run its batch size; else the error saying what can."""
    from hwnas.backends import BACKENDS

    most = BACKENDS.get(device.backend).max_batch(device)
    if device.batch > most:
        raise _fail(where, f"batch {device.batch} cannot run on backend {device.backend!r} with "
                           f"these settings; it takes batch 1..{most}")
    return device


def batch_stem(name: str, batch: int) -> str:
    """A device name without its ``-b<batch>`` ending (``cuda-torch-b64`` -> ``cuda-torch``)."""
    suffix = f"-b{batch}"
    return name[:-len(suffix)] if batch != 1 and name.endswith(suffix) else name


def find_device_file(name_or_path: str | Path) -> Path:
    """A device file by path, or by name in ./devices or this repository's devices/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise DeviceError(f"device file {p} does not exist")
        return p
    found = _named_file(str(name_or_path))
    if found is not None:
        return found
    known = ", ".join(sorted(d.stem for d in list_device_files())) or "none"
    raise DeviceError(f"no device named {str(name_or_path)!r}; known devices: {known} "
                      f"(or give a path to a .yaml file)")


def _named_file(name: str) -> Path | None:
    """The device file called ``name`` in ./devices or this repository's devices/."""
    for folder in (Path.cwd() / "devices", REPO_DEVICES):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    return None


def list_device_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in (REPO_DEVICES, Path.cwd() / "devices"):
        if folder.is_dir():
            for f in sorted(folder.glob("*.y*ml")):
                seen[f.stem] = f
    return list(seen.values())


def load_device(name_or_path: str | Path | Device, batch: int | None = None) -> Device:
    """Load and validate a device by name or path; ``batch`` overrides its batch size. A
    name ``<device>-b<N>`` with no file of its own is ``<device>`` at batch N."""
    if isinstance(name_or_path, Device):
        return name_or_path if batch is None else name_or_path.with_batch(batch)
    device = _load_file(name_or_path)
    if batch is None or batch == device.batch:
        return device
    # A name says the settings: where the device at that batch has a file of its own
    # (cpu-onnxruntime at batch 32 is cpu-onnxruntime-b32.yaml, its p10 and reloads), that
    # file is the device; two devices of one name would write one table two ways.
    stem = batch_stem(device.name, device.batch)
    named = stem if batch == 1 else f"{stem}-b{batch}"
    if not Path(name_or_path).suffix and _named_file(named) is not None:
        return _load_file(named)
    return device.with_batch(batch)


def _load_file(name_or_path: str | Path) -> Device:
    import re

    match = re.fullmatch(r"(.+)-b([0-9]+)", str(name_or_path))
    if match and not Path(name_or_path).suffix and _named_file(str(name_or_path)) is None:
        try:
            base = _load_file(match.group(1))
        except DeviceError:
            pass
        else:
            batch = int(match.group(2))
            if not 1 <= batch <= MAX_BATCH:
                raise DeviceError(f"{name_or_path}: batch {batch} is not in 1..{MAX_BATCH}")
            return base.with_batch(batch)
    path = find_device_file(name_or_path)
    data = read_yaml(path, DeviceError, "device file")
    device = parse_device(data, where=str(path))
    return dataclasses.replace(device, path=str(path))


def check_usable(device: Device) -> str | None:
    """None if this machine can run ``device``, else what is missing, in words."""
    import os

    from hwnas.backends import get_backend_class

    if isinstance(device.cpu_affinity, tuple) and hasattr(os, "sched_getaffinity"):
        have = sorted(os.sched_getaffinity(0))
        missing = sorted(set(device.cpu_affinity) - set(have))
        if missing:
            return f"cpu_affinity names core(s) {missing} this machine lacks; it has {have}"
    if device.hardware == "cpu" and device.threads > (os.cpu_count() or 1):
        return (f"threads: {device.threads} on a machine with {os.cpu_count()} cores would "
                f"measure contention, not the device")
    return get_backend_class(device.backend).check(device)


def device_fingerprint(device: Device) -> dict[str, Any]:
    """Everything that decides the numbers: host CPU (name, family/model/stepping, the
    flags kernels use), hardware, runtime and its version, threads, batch, precision,
    affinity, GPU (name, compute capability, driver). Stored with every measured table;
    the calibration probes (``hwnas.probe``) tell machines of one fingerprint apart."""
    from hwnas.backends import get_backend_class
    from hwnas.fingerprint import cpu_identity, cpu_model, host_fingerprint

    host = host_fingerprint()
    fp: dict[str, Any] = {
        "device": device.name,
        "backend": device.backend,
        "hardware": device.hardware,
        "threads": device.threads,
        "batch": device.batch,
        "precision": device.precision,
        "cpu": cpu_model(),
        "cores": host["cores"],
        "cpu_affinity": list(device.cpu_affinity) if isinstance(device.cpu_affinity, tuple)
        else device.cpu_affinity,
        "hwnas": host["hwnas"],
    }
    if device.hardware != "android":  # the host's CPU runs (or feeds) the model
        fp.update(cpu_identity())
    if device.execution_provider:
        fp["execution_provider"] = device.execution_provider
    fp.update(get_backend_class(device.backend).runtime_info(device))
    return fp


def fingerprint_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} vs {b.get(key)!r}")
    return out


def devices_table(paths: Sequence[str | Path] | None = None) -> tuple["Table", int]:
    """Every device file (default: those in ``devices/``), validated, with whether it is
    usable on this machine and, if not, what is missing; and how many were invalid."""
    from hwnas.display import Table

    table = Table("", ["device", "backend", "hardware", "threads", "batch", "precision",
                       "usable here"])
    bad = 0
    for path in paths or list_device_files():
        try:
            dev = load_device(path)
        except DeviceError as exc:
            bad += 1
            table.rows.append([str(path), "", "", "", "", "", f"invalid: {exc}"])
            continue
        missing = check_usable(dev)
        table.rows.append([dev.name, dev.backend, dev.hardware, str(dev.threads),
                           str(dev.batch), dev.precision,
                           "yes" if missing is None else f"no: {missing}"])
    return table, bad
