"""TensorRT: an engine built from the ONNX file (fp32 or fp16), timed with CUDA events,
per-layer times through ``IProfiler``.

TensorRT cannot be installed on CPU-only machines. Every step against its API is a small
function taking the ``tensorrt`` module (:func:`build_engine_bytes`, :func:`deserialize`,
:func:`bind`, :func:`execute`), so the builder settings, the checks of every return value,
the timing cache and the engine cache key are tested here with a stand-in module; the
engine path runs where ``tensorrt`` and CUDA are present (and has not run yet: the README
says so).

What is checked, because TensorRT reports failure by return value rather than exception:
parsing, building, deserialising, creating a context, setting the input shape and tensor
addresses, and every ``execute_async_v3``. "fp32" engines are built with TF32 off (TensorRT
enables it by default on Ampere and later). Builds run on the device's own GPU
(``cuda_device``), share one logger, and reuse a timing cache kept beside the engine cache.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.backends.base import BACKENDS, Backend, Runner, cuda_events, cuda_missing, sample_input
from hwnas.errors import BackendError
from hwnas.files import atomic_write

_LOGGERS: dict[int, Any] = {}


def logger(trt) -> Any:
    """The one ``trt.Logger`` of a process (TensorRT expects one, shared by builders and
    runtimes)."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]


def builder_settings(device) -> dict[str, Any]:
    """What the builder is asked for (recorded in the fingerprint and the manifest)."""
    return {"precision": device.precision, "workspace_bytes": device.workspace_mb << 20,
            "tf32": device.precision != "fp32", "profiling_verbosity": "DETAILED"}


def network_flags(trt) -> int:
    """Explicit batch: a flag before TensorRT 10, the only mode (flag 0) from 10 on."""
    major = int(str(trt.__version__).split(".")[0])
    if major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def gpu_identity(index: int) -> dict[str, str]:
    """The GPU an engine is built for: name and compute capability (an engine runs only
    on the kind of GPU it was built on)."""
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return {"gpu": "none", "gpu_capability": "none"}
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "gpu_capability": f"{major}.{minor}"}


def engine_cache_key(key: str, trt_version: str, settings: dict[str, Any],
                     gpu: dict[str, str], input_shape: tuple[int, ...]) -> str:
    """Everything an engine depends on: the model (``key``), TensorRT's version, precision,
    TF32, workspace, the GPU and its compute capability, and the input shape."""
    return "|".join([key, f"trt{trt_version}", settings["precision"],
                     f"tf32={settings['tf32']}", f"ws{settings['workspace_bytes']}",
                     gpu["gpu"], f"sm{gpu['gpu_capability']}",
                     "x".join(str(d) for d in input_shape)])


def summarize_layer_times(records: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per-layer median ms and share of the total, slowest first (IProfiler reports)."""
    rows = [{"layer": name, "median_ms": statistics.median(ms), "calls": len(ms)}
            for name, ms in records.items() if ms]
    total = sum(r["median_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["median_ms"] / total
    return sorted(rows, key=lambda r: -r["median_ms"])


def parse_errors(parser) -> str:
    return "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))


def build_engine_bytes(trt, onnx_bytes: bytes, input_shape: tuple[int, ...],
                       settings: dict[str, Any], timing_cache: bytes | None = None,
                       source: str = "model.onnx") -> tuple[bytes, bytes]:
    """(serialized engine, serialized timing cache) for an ONNX model; every step's
    failure raises :class:`BackendError` naming it."""
    log = logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        raise BackendError(f"TensorRT could not parse {source}: {parse_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    if settings["precision"] == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if not settings["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = config.create_timing_cache(timing_cache or b"")
    if cache is None or not config.set_timing_cache(cache, False):
        # a cache of another TensorRT version or GPU: start a fresh one
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise BackendError("TensorRT could not set a timing cache")
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, input_shape, input_shape, input_shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {source}")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def deserialize(trt, engine_bytes: bytes, source: str = "engine") -> Any:
    engine = trt.Runtime(logger(trt)).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BackendError(f"TensorRT could not deserialize {source} (built by another "
                           f"TensorRT version or for another GPU?)")
    return engine


def bind(trt, engine, input_shape: tuple[int, ...], make_buffer) -> tuple[Any, dict, str, str]:
    """A new execution context with the input shape set and a buffer bound to every I/O
    tensor (``make_buffer(name, shape, dtype, is_input)`` returns a tensor);
    (context, buffers, input name, output name)."""
    context = engine.create_execution_context()
    if context is None:
        raise BackendError("TensorRT could not create an execution context (out of GPU "
                           "memory?)")
    buffers: dict[str, Any] = {}
    input_name = output_name = None
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = trt.nptype(engine.get_tensor_dtype(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if not context.set_input_shape(name, input_shape):
                raise BackendError(f"TensorRT refused input shape {input_shape} for {name!r}")
            buffers[name] = make_buffer(name, input_shape, dtype, True)
            input_name = name
        else:
            buffers[name] = make_buffer(name, tuple(context.get_tensor_shape(name)), dtype,
                                        False)
            output_name = name
        if not context.set_tensor_address(name, buffers[name].data_ptr()):
            raise BackendError(f"TensorRT refused the buffer of {name!r}")
    if input_name is None or output_name is None:
        raise BackendError("the engine has no input or no output tensor")
    return context, buffers, input_name, output_name


def execute(context, stream_handle: int) -> None:
    if not context.execute_async_v3(stream_handle):
        raise BackendError("TensorRT failed to enqueue the engine (execute_async_v3)")


@BACKENDS.register('tensorrt')
class TensorRTBackend(Backend):
    file_format = "tensorrt"  # load() runs an exported .engine (or builds one from .onnx)
    name = "tensorrt"
    hardware = ("cuda",)

    @classmethod
    def check(cls, device) -> str | None:
        missing = cuda_missing(device.cuda_device)
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            why = "the tensorrt Python package is not installed (pip install 'hwnas[tensorrt]' " \
                  "on a machine with an NVIDIA GPU and driver)"
            return f"{why}; also {missing}" if missing else why
        return missing

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        info: dict[str, Any] = {"runtime": "tensorrt", **builder_settings(device)}
        try:
            import tensorrt as trt

            info["runtime_version"] = trt.__version__
        except ImportError:
            info["runtime_version"] = None
        if torch.cuda.is_available():
            from hwnas.fingerprint import gpu_info

            info.update(gpu_identity(device.cuda_device))
            info["gpu_driver"] = gpu_info().get("gpu_driver")
        return info

    @property
    def _cuda(self) -> torch.device:
        return torch.device("cuda", self.device.cuda_device)

    def build_engine(self, onnx_path: Path, input_shape: tuple[int, ...], key: str) -> bytes:
        """Serialized engine for the ONNX file on this device's GPU (cached; the timing
        cache beside it makes later builds faster)."""
        import tensorrt as trt

        settings = builder_settings(self.device)
        cache = self.cache_path(engine_cache_key(key, trt.__version__, settings,
                                                 gpu_identity(self.device.cuda_device),
                                                 input_shape), ".engine")
        if cache.exists():
            return cache.read_bytes()
        timing = self.cache_dir / f"timing-trt{trt.__version__}.cache"
        with torch.cuda.device(self._cuda):
            data, timing_bytes = build_engine_bytes(
                trt, Path(onnx_path).read_bytes(), input_shape, settings,
                timing.read_bytes() if timing.exists() else None, Path(onnx_path).name)
        atomic_write(cache, lambda tmp: tmp.write_bytes(data))
        atomic_write(timing, lambda tmp: tmp.write_bytes(timing_bytes))
        return data

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        # The ONNX file is exported in fp32; TensorRT lowers precision itself (FP16 flag).
        onnx_path = self.cache_path(key, ".onnx")
        if not onnx_path.exists():
            from hwnas.convert import to_onnx

            to_onnx(module.eval().float(), sample_input(input_shape), onnx_path)
        return self.load(onnx_path, input_shape, key)

    def discard(self, keys) -> int:
        """The ONNX file an engine was built from (exported again in seconds); the engine
        itself, minutes to build, stays cached."""
        return self._unlink(self.cache_path(key, ".onnx") for key in keys)

    def load(self, path, input_shape: tuple[int, ...], key: str = "") -> Runner:
        """Run an engine file as it is (``.engine``, e.g. an exported one), or one built
        from an ONNX file (cached by ``key``, else by the file's hash)."""
        import tensorrt as trt

        path = Path(path)
        if path.suffix == ".onnx":
            key = key or hashlib.sha256(path.read_bytes()).hexdigest()
            engine_bytes = self.build_engine(path, input_shape, key)
        else:
            engine_bytes = path.read_bytes()
        dev = self._cuda

        def make_buffer(name, shape, dtype, is_input):
            torch_dtype = torch.from_numpy(np.zeros(1, dtype)).dtype
            if is_input:
                return sample_input(shape).to(dev, torch_dtype)
            return torch.empty(shape, dtype=torch_dtype, device=dev)

        with torch.cuda.device(dev):
            engine = deserialize(trt, engine_bytes, path.name)
            context, buffers, input_name, output_name = bind(trt, engine, input_shape,
                                                             make_buffer)
            stream = torch.cuda.Stream(device=dev)

        def run() -> None:
            execute(context, stream.cuda_stream)

        def infer(arr: np.ndarray) -> np.ndarray:
            buffers[input_name].copy_(torch.from_numpy(arr))
            run()
            stream.synchronize()
            return buffers[output_name].float().cpu().numpy()

        def layer_times(n: int = 20) -> list[dict[str, Any]]:
            """Per-layer times from an ``IProfiler`` on a context of its own, so the timing
            context is never profiled."""
            records: dict[str, list[float]] = defaultdict(list)

            class Profiler(trt.IProfiler):
                def __init__(self) -> None:
                    trt.IProfiler.__init__(self)

                def report_layer_time(self, layer_name: str, ms: float) -> None:
                    records[layer_name].append(ms)

            with torch.cuda.device(dev):
                profiled, *_ = bind(trt, engine, input_shape, make_buffer)
                profiled.profiler = Profiler()
                for _ in range(n):
                    execute(profiled, stream.cuda_stream)
                    stream.synchronize()
            return summarize_layer_times(records)

        return Runner(run=run, time=lambda n: cuda_events(run, n, stream), infer=infer,
                      info={"engine": path.name, "layer_times": layer_times})
