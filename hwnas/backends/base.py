"""What every backend provides: a prepared model (:class:`Runner`) that can be run and
timed, plus a check of whether this machine can run the device at all."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.errors import BackendError, DeviceError
from hwnas.registry import Registry

DEFAULT_CACHE = Path("lut") / ".cache"
# Backends by name: each module of this package registers its class, so a new backend is
# one new file here.
BACKENDS: Registry = Registry("backend", DeviceError, package="hwnas.backends")


def wallclock(fn: Callable[[], Any], n: int) -> np.ndarray:
    """Seconds taken by each of ``n`` calls of ``fn`` (monotonic clock, per call)."""
    out = np.empty(n, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        fn()
        out[i] = clock() - start
    return out * 1e-9


@dataclass
class Runner:
    """One model loaded in one runtime.

    ``run()`` does one inference on a fixed input; ``time(n)`` returns the seconds of each
    of ``n`` timed inferences. A runtime that reports only statistics of n calls (TFLite's
    ``benchmark_model``) returns one value per call of ``time`` and says so:
    ``info["per_call"]`` is False and ``info["statistic"]`` says what the value is;
    ``infer(x)`` runs a given NCHW numpy input and returns the output (for checking
    numbers against PyTorch); ``close()`` frees the runtime's resources.
    """

    run: Callable[[], Any]
    time: Callable[[int], np.ndarray]
    infer: Callable[[np.ndarray], np.ndarray] | None = None
    close: Callable[[], None] = field(default=lambda: None)
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """A runtime on a device. Subclasses implement :meth:`prepare` and :meth:`check`."""

    name: ClassVar[str]
    hardware: ClassVar[tuple[str, ...]] = ()  # what it can drive: cpu, cuda, android
    file_format: ClassVar[str | None] = None  # the file kind load() takes: onnx, tflite

    def __init__(self, device, cache_dir: str | Path | None = None) -> None:
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE / device.name
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    @abstractmethod
    def check(cls, device) -> str | None:
        """None if this machine can run ``device``; else what is missing, in words."""

    @classmethod
    def max_batch(cls, device) -> int:
        """The largest batch this runtime runs with ``device``'s settings."""
        from hwnas.devices import MAX_BATCH

        return MAX_BATCH

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        """Runtime name and version and the hardware it runs on (for the fingerprint)."""
        return {}

    @abstractmethod
    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        """Build/convert ``module`` for an NCHW input of ``input_shape`` (the device's batch
        first) for timing; ``key`` names the converted file in the cache."""

    def prepare_many(self, items: Sequence[tuple[Callable[[], nn.Module], tuple[int, ...], str]],
                     advance: Callable[[int], Any] = lambda n: None) -> list[Runner]:
        """:meth:`prepare` for each (build, input shape, key); ``advance(n)`` reports
        progress. A backend whose conversion has a large fixed cost converts them together."""
        runners = []
        for build, shape, key in items:
            torch.manual_seed(0)
            runners.append(self.prepare(build(), shape, key))
            advance(1)
        return runners

    def load(self, path: str | Path, input_shape: tuple[int, ...], key: str = "") -> Runner:
        """Load a model file this runtime runs (``file_format``), e.g. an exported one."""
        raise BackendError(f"the {self.name} backend runs PyTorch modules, not model files")

    def discard(self, keys: Sequence[str]) -> int:
        """Delete the converted files of the models ``keys`` (cache keys, as ``prepare``
        takes) that this backend makes again in seconds when asked: a timed subnet's model
        is tens of MB, and a profile of hundreds of them would otherwise leave gigabytes.
        Returns the bytes freed. Backends whose files are cheap or kept on purpose (ops,
        TensorRT engines) keep them."""
        return 0

    def _unlink(self, paths) -> int:
        freed = 0
        for path in paths:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # never made, or discarded already
                continue
            freed += size
        return freed

    def cache_path(self, key: str, suffix: str) -> Path:
        """A file name for a converted artefact of ``key`` (op keys contain ':' and '>')."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.cache_dir / f"{digest}{suffix}"


def model_key(ident: str, device) -> str:
    """The key a converted model of ``ident`` (an op key, a subnet's space and arch) is
    cached under on ``device``: what the ident leaves out (precision, batch) appended."""
    batch = f"|b{device.batch}" if device.batch != 1 else ""
    return f"{ident}|{device.precision}{batch}"


def network_parts(build, device) -> list[tuple] | None:
    """(build, input shape, key) of each op of a network whose ``build`` is a
    :class:`hwnas.ops.NetworkBuild`, as ``prepare_many`` takes them on ``device`` (the
    backends that assemble a network from its ops' files); None for any other build."""
    from hwnas.ops import NetworkBuild

    if not isinstance(build, NetworkBuild):
        return None
    return [(op.build, device.input_shape(op.input_shape), model_key(op.key, device))
            for op in build.op_list]


def make_models(items, device, made: Callable[[str], bool],
                make: Callable[[list[tuple]], Iterator[list[tuple]]],
                stitch: Callable[[str, list[str]], None],
                advance: Callable[[int], None] = lambda n: None) -> None:
    """Make the file of each (build, input shape, key) item that ``made(key)`` says is
    missing, for the backends that load files: a network whose build is a
    :class:`hwnas.ops.NetworkBuild` is stitched (``stitch(key, its ops' keys)``) from its
    ops' files, and those are made where missing. ``make(missing items)`` makes files in
    groups, yielding each group done; ``advance`` counts the items themselves as each is
    made or found made (a network's ops are not counted)."""
    todo: dict[str, tuple] = {}
    networks: dict[str, list[str]] = {}  # a network's key -> its ops' keys, in order
    for build, shape, key in items:
        if made(key) or key in networks:
            continue
        parts = network_parts(build, device)
        if parts is None:
            parts = [(build, shape, key)]
        else:
            networks[key] = [part_key for _, _, part_key in parts]
        todo.update({part[2]: part for part in parts if not made(part[2])})
    own = {key for _, _, key in items}
    for group in make(list(todo.values())):
        advance(sum(key in own for _, _, key in group))
    for key, part_keys in networks.items():
        stitch(key, part_keys)
        advance(1)
    advance(sum(1 for _, _, key in items if key not in todo and key not in networks))


def sample_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A fixed random input (timing does not depend on values, checks do)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def cuda_events(fn: Callable[[], Any], n: int, stream: "torch.cuda.Stream | None" = None,
                device: int | None = None) -> np.ndarray:
    """Seconds of each of ``n`` calls measured with CUDA events on ``stream`` of CUDA device
    ``device`` (default: the stream's, else the current one): the clock stops only when the
    GPU has finished the work queued by the call."""
    index = stream.device.index if stream is not None and device is None else device
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        stream = stream or torch.cuda.current_stream()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda.synchronize()
        for s, e in zip(starts, ends):
            s.record(stream)
            fn()
            e.record(stream)
        torch.cuda.synchronize()
    return np.array([s.elapsed_time(e) for s, e in zip(starts, ends)]) * 1e-3


MMAP_THRESHOLD = 32 << 20   # glibc's largest
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def steady_heap() -> str:
    """Keep glibc's malloc from mapping and unmapping large blocks on every call.

    PyTorch eager allocates every activation afresh; with glibc's default (dynamic)
    thresholds, blocks above a few hundred KB come from mmap, and each call then pays page
    faults for them or not depending on the heap's history: the same net measured 8.5 ms in
    one process and 14-19 ms in another, and the same op differently alone (the LUT) and
    inside a net. Fixed thresholds make every call reuse the heap, as a caching allocator
    (jemalloc, tcmalloc) would. Returns what was set, for the fingerprint."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "default"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(-3, MMAP_THRESHOLD) and libc.mallopt(-1, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        return "default"
    return f"glibc mmap_threshold={MMAP_THRESHOLD >> 20}MiB" if ok else "default"


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 matmuls and convolutions on or off while timing: "fp32" on Ampere and later
    would otherwise compute in TF32 (PyTorch's cuDNN default), a different precision."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def cuda_missing(index: int = 0) -> str | None:
    """Why PyTorch cannot use CUDA device ``index`` here, or None."""
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to PyTorch (torch {torch.__version__}" + (
            ", a CPU-only build)" if torch.version.cuda is None else ")")
    if index >= torch.cuda.device_count():
        return f"CUDA device {index} requested, {torch.cuda.device_count()} present"
    return None
