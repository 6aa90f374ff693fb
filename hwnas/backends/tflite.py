"""TFLite through LiteRT (``ai-edge-litert``): the interpreter with XNNPACK on CPU, and
``CompiledModel`` with the GPU accelerator (WebGPU/OpenCL, the GPU-delegate family phones
use) where the machine has a GPU driver. Models have NHWC I/O (see ``hwnas.convert``).

LiteRT exposes no per-op profiler to Python, so per-op latency comes from timing each op
as its own model, which is what the lookup table does anyway.
"""

from __future__ import annotations

import importlib.util

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hwnas.backends.base import BACKENDS, Backend, Runner, sample_input, wallclock
from hwnas.convert import nhwc, to_tflite
from hwnas.errors import BackendError

PROBE_MODEL = Path(__file__).resolve().parents[1] / "data" / "probe.tflite"


def litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


def _gpu_model(path: str, precision: str = "fp32", litert=None):
    """A LiteRT CompiledModel on the GPU accelerator, computing in the device's precision
    (fp32: ``enforce_f32``; fp16: the accelerator's half precision), and running the whole
    model: a model the accelerator takes only in part would run the rest on the CPU, and
    be timed as GPU. BackendError saying why not otherwise."""
    if litert is None:
        import ai_edge_litert.compiled_model as litert

    options = litert.Options(hardware_accelerators=litert.HardwareAccelerator.GPU,
                             gpu_options=litert.GpuOptions(enforce_f32=precision == "fp32"))
    try:
        model = litert.CompiledModel.from_file(path, options=options)
    except RuntimeError as exc:
        raise BackendError(f"LiteRT's GPU accelerator is unusable here "
                           f"({' '.join(str(exc).split())[:200]}; it needs a GPU with a "
                           f"Vulkan/OpenCL/WebGPU driver)") from None
    if not model.is_fully_accelerated():
        raise BackendError(f"LiteRT's GPU accelerator does not take all of {Path(path).name}; "
                           f"the rest would run on the CPU and be timed as GPU")
    return model


@BACKENDS.register('tflite')
class TFLiteBackend(Backend):
    name = "tflite"
    hardware = ("cpu", "cuda")  # cuda: LiteRT's GPU accelerator on a desktop GPU
    file_format = "tflite"

    @classmethod
    def check(cls, device) -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return "ai-edge-litert is not installed (pip install 'hwnas[tflite]')"
        if importlib.util.find_spec("litert_torch") is None:
            return "litert-torch (the PyTorch->TFLite converter) is not installed (pip install " \
                   "'hwnas[tflite-convert]')"
        if device.hardware == "cuda":
            try:
                _gpu_model(str(PROBE_MODEL), device.precision)
            except BackendError as exc:
                return str(exc)
        return None

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        info: dict[str, Any] = {"runtime": "litert", "runtime_version": litert_version()}
        if device.hardware == "cuda":
            from hwnas.fingerprint import gpu_info

            info.update(accelerator="gpu", gpu_precision=device.precision, **gpu_info())
        else:
            info["accelerator"] = "xnnpack"
        return info

    def tflite_file(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Path:
        path = self.cache_path(key, ".tflite")
        if not path.exists():
            to_tflite(module, sample_input(input_shape), path)
        return path

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        return self.load(self.tflite_file(module, input_shape, key), input_shape, key)

    def load(self, path, input_shape: tuple[int, ...], key: str = "") -> Runner:
        path = Path(path)
        x = nhwc(sample_input(input_shape)).numpy()
        if self.device.hardware == "cuda":
            return self._gpu_runner(path, x)
        return interpreter_runner(path, x, self.device.threads)

    def _gpu_runner(self, path: Path, x: np.ndarray) -> Runner:
        model = _gpu_model(str(path), self.device.precision)
        inputs = model.create_input_buffers(0)
        outputs = model.create_output_buffers(0)
        out_shape = model.get_output_tensor_details("serving_default")
        inputs[0].write(x)

        def run() -> None:
            model.run_by_index(0, inputs, outputs)

        def infer(arr: np.ndarray) -> np.ndarray:
            inputs[0].write(nhwc_np(arr).astype(np.float32))
            run()
            details = next(iter(out_shape.values()))
            shape = tuple(details["shape"])
            y = outputs[0].read(int(np.prod(shape)), np.float32).reshape(shape)
            return nchw_np(y)

        return Runner(run=run, time=lambda n: wallclock(run, n), infer=infer,
                      info={"tflite": str(path), "accelerator": "gpu"})


def nhwc_np(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def nchw_np(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def interpreter_runner(path: str | Path, x_nhwc: np.ndarray, threads: int) -> Runner:
    """A LiteRT interpreter (XNNPACK) on CPU; ``infer`` takes and returns NCHW arrays."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise BackendError(f"LiteRT could not load {path}: {exc}") from exc
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    if tuple(inp["shape"]) != x_nhwc.shape:
        raise BackendError(f"{path}: model input shape {tuple(inp['shape'])} does not match "
                           f"{x_nhwc.shape}")
    it.set_tensor(inp["index"], x_nhwc.astype(inp["dtype"]))

    def infer(arr: np.ndarray) -> np.ndarray:
        it.set_tensor(inp["index"], nhwc_np(arr).astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        it.set_tensor(inp["index"], x_nhwc.astype(inp["dtype"]))
        return nchw_np(y)

    ops = [d["op_name"] for d in it._get_ops_details()]
    return Runner(run=it.invoke, time=lambda n: wallclock(it.invoke, n), infer=infer,
                  info={"tflite": str(path), "ops": ops, "accelerator": "xnnpack"})
