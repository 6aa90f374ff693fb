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
# Upper bounds of the measurement protocol (beyond them a table would take days, or the
# sample arrays more memory than any machine has).
PROTOCOL_LIMITS = {"warmup": 10_000, "runs": 100_000, "rounds": 1_000, "max_retries": 100,
                   "window": 1_000_000}
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
    window: int = 0          # items interleaved together (0: all); subnets use a window
    seed: int = 0            # shuffling seed


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
    precision: str = "fp32"
    execution_provider: str | None = None      # onnxruntime
    cpu_affinity: tuple[int, ...] | None = None  # pin the measuring process to these cores
    cuda_device: int = 0
    workspace_mb: int = 1024                    # tensorrt builder workspace
    description: str = ""
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)
    android: AndroidSettings | None = None
    path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        if out["cpu_affinity"] is not None:
            out["cpu_affinity"] = list(out["cpu_affinity"])
        return out


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
    if affinity is not None:
        if not isinstance(affinity, list) or not affinity or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in affinity):
            raise _fail(where, f"field 'cpu_affinity' must be a non-empty list of core numbers, "
                               f"got {affinity!r}")
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
    return Device(name=name, backend=backend, hardware=hardware, threads=threads,
                  precision=precision, execution_provider=ep, cpu_affinity=affinity,
                  cuda_device=cuda_device, workspace_mb=workspace, description=description,
                  protocol=protocol, android=android)


def find_device_file(name_or_path: str | Path) -> Path:
    """A device file by path, or by name in ./devices or this repository's devices/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise DeviceError(f"device file {p} does not exist")
        return p
    for folder in (Path.cwd() / "devices", REPO_DEVICES):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.exists():
                return candidate
    known = ", ".join(sorted(d.stem for d in list_device_files())) or "none"
    raise DeviceError(f"no device named {str(name_or_path)!r}; known devices: {known} "
                      f"(or give a path to a .yaml file)")


def list_device_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in (REPO_DEVICES, Path.cwd() / "devices"):
        if folder.is_dir():
            for f in sorted(folder.glob("*.y*ml")):
                seen[f.stem] = f
    return list(seen.values())


def load_device(name_or_path: str | Path | Device) -> Device:
    """Load and validate a device by name or path."""
    if isinstance(name_or_path, Device):
        return name_or_path
    path = find_device_file(name_or_path)
    data = read_yaml(path, DeviceError, "device file")
    device = parse_device(data, where=str(path))
    return dataclasses.replace(device, path=str(path))


def check_usable(device: Device) -> str | None:
    """None if this machine can run ``device``, else what is missing, in words."""
    import os

    from hwnas.backends import get_backend_class

    if device.cpu_affinity and hasattr(os, "sched_getaffinity"):
        have = sorted(os.sched_getaffinity(0))
        missing = sorted(set(device.cpu_affinity) - set(have))
        if missing:
            return f"cpu_affinity names core(s) {missing} this machine lacks; it has {have}"
    if device.hardware == "cpu" and device.threads > (os.cpu_count() or 1):
        return (f"threads: {device.threads} on a machine with {os.cpu_count()} cores would "
                f"measure contention, not the device")
    return get_backend_class(device.backend).check(device)


def device_fingerprint(device: Device) -> dict[str, Any]:
    """Everything that decides the numbers: host, hardware, runtime and its version,
    threads, precision, affinity. Stored with every measured table."""
    from hwnas.backends import get_backend_class
    from hwnas.fingerprint import cpu_model, host_fingerprint

    host = host_fingerprint()
    fp: dict[str, Any] = {
        "device": device.name,
        "backend": device.backend,
        "hardware": device.hardware,
        "threads": device.threads,
        "precision": device.precision,
        "cpu": cpu_model(),
        "cores": host["cores"],
        "cpu_affinity": list(device.cpu_affinity) if device.cpu_affinity else None,
        "hwnas": host["hwnas"],
    }
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

    table = Table("", ["device", "backend", "hardware", "threads", "precision", "usable here"])
    bad = 0
    for path in paths or list_device_files():
        try:
            dev = load_device(path)
        except DeviceError as exc:
            bad += 1
            table.rows.append([str(path), "", "", "", "", f"invalid: {exc}"])
            continue
        missing = check_usable(dev)
        table.rows.append([dev.name, dev.backend, dev.hardware, str(dev.threads), dev.precision,
                           "yes" if missing is None else f"no: {missing}"])
    return table, bad
