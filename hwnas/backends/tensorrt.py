"""TensorRT: an engine built from the ONNX file (fp32 or fp16), timed with CUDA events,
per-layer times through ``IProfiler``.

TensorRT cannot be installed on CPU-only machines; everything here that needs no GPU
(builder settings, network flags, layer-time summaries, the usability check) is plain
Python and tested there; the engine path runs where ``tensorrt`` and CUDA are present.
"""

from __future__ import annotations

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


def builder_settings(device) -> dict[str, Any]:
    """What the builder is asked for (recorded in the fingerprint and the manifest)."""
    return {"precision": device.precision, "workspace_bytes": device.workspace_mb << 20,
            "profiling_verbosity": "DETAILED"}


def network_flags(trt) -> int:
    """Explicit batch: a flag before TensorRT 10, the only mode (flag 0) from 10 on."""
    major = int(str(trt.__version__).split(".")[0])
    if major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


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


@BACKENDS.register('tensorrt')
class TensorRTBackend(Backend):
    file_format = "onnx"  # load() builds the engine from the ONNX file
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

            info["gpu"] = torch.cuda.get_device_name(device.cuda_device)
            info["gpu_driver"] = gpu_info().get("gpu_driver")
        return info

    def build_engine(self, onnx_path: Path, input_shape: tuple[int, ...], key: str) -> bytes:
        """Serialized engine for the ONNX file (cached next to it)."""
        import tensorrt as trt

        cache = self.cache_path(f"{key}|trt{trt.__version__}|{self.device.precision}", ".engine")
        if cache.exists():
            return cache.read_bytes()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(onnx_path).read_bytes()):
            raise BackendError(f"TensorRT could not parse {onnx_path}: {parse_errors(parser)}")
        config = builder.create_builder_config()
        settings = builder_settings(self.device)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
        if self.device.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, input_shape, input_shape, input_shape)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT failed to build an engine from {onnx_path}")
        data = bytes(serialized)
        atomic_write(cache, lambda tmp: tmp.write_bytes(data))
        return data

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        # The ONNX file is exported in fp32; TensorRT lowers precision itself (FP16 flag).
        onnx_path = self.cache_path(key, ".onnx")
        if not onnx_path.exists():
            from hwnas.convert import to_onnx

            to_onnx(module.eval().float(), sample_input(input_shape), onnx_path)
        return self.load(onnx_path, input_shape, key)

    def load(self, onnx_path, input_shape: tuple[int, ...], key: str = "") -> Runner:
        """An engine built from an ONNX file (cached by ``key``, else by the file's hash)."""
        import tensorrt as trt

        if not key:
            import hashlib

            key = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
        engine_bytes = self.build_engine(onnx_path, input_shape, key)
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        context = engine.create_execution_context()
        dev = torch.device(f"cuda:{self.device.cuda_device}")
        buffers: dict[str, torch.Tensor] = {}
        input_name = output_name = None
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, input_shape)
                buffers[name] = sample_input(input_shape).to(dev, dtype)
                input_name = name
            else:
                shape = tuple(context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=dtype, device=dev)
                output_name = name
            context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.Stream(device=dev)

        def run() -> None:
            context.execute_async_v3(stream.cuda_stream)

        def infer(arr: np.ndarray) -> np.ndarray:
            buffers[input_name].copy_(torch.from_numpy(arr))
            run()
            stream.synchronize()
            return buffers[output_name].float().cpu().numpy()

        def layer_times(n: int = 20) -> list[dict[str, Any]]:
            records: dict[str, list[float]] = defaultdict(list)

            class Profiler(trt.IProfiler):
                def __init__(self) -> None:
                    trt.IProfiler.__init__(self)

                def report_layer_time(self, layer_name: str, ms: float) -> None:
                    records[layer_name].append(ms)

            context.profiler = Profiler()
            for _ in range(n):
                run()
                stream.synchronize()
            return summarize_layer_times(records)

        return Runner(run=run, time=lambda n: cuda_events(run, n, stream), infer=infer,
                      info={"onnx": str(onnx_path), "layer_times": layer_times})

