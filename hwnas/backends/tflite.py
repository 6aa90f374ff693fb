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
from hwnas.workers import in_workers

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


def discardable_files(backend: Backend, keys) -> list[Path]:
    """What a TFLite backend deletes of timed subnets ``keys``: each one's stitched file
    (restitched in milliseconds from its ops' files, which stay) and any single-model
    file beside the tables."""
    cache = ConvertedCache()
    return [p for key in keys for p in (cache.path(key), backend.cache_path(key, ".tflite"))]


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
    def max_batch(cls, device) -> int:
        # LiteRT's GPU accelerator, like the phone's GPU delegate, takes batch 1 only
        return 1 if device.hardware == "cuda" else super().max_batch(device)

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

    def prepare_many(self, items, advance=lambda n: None) -> list[Runner]:
        """Convert many models per conversion and cache them across runs
        (:func:`convert_cached`), then load each file as :meth:`load` does."""
        paths = convert_cached(items, self.device, advance)
        return [self.load(path, shape, key) for path, (_, shape, key) in zip(paths, items)]

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        return self.load(self.tflite_file(module, input_shape, key), input_shape, key)

    def discard(self, keys) -> int:
        return self._unlink(discardable_files(self, keys))

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


MODELS_PER_CONVERSION = 40  # measured: the fixed cost shared, memory still small


def _convert_group(group) -> None:
    """One conversion (in a worker process where there are several cores)."""
    ConvertedCache().convert(group)


def convert_cached(items, device, advance=lambda n: None) -> list[Path]:
    """The ``.tflite`` file of each (build, input shape, key) for ``device``.

    Missing models are converted :data:`MODELS_PER_CONVERSION` per litert-torch conversion
    (branches of one graph, split into a file each: ``hwnas.convert.to_tflite_many``). A
    network whose ``build`` is a :class:`hwnas.ops.NetworkBuild` is instead stitched from
    its ops' files (converted the same way where missing), with each op's weights as its
    own file has them. Files stay in the user cache keyed by model key, hwnas and converter
    version, so a later run (another folder, another device running TFLite) converts
    nothing again. ``build()`` is called under seed 0, so a key names one set of weights."""
    from hwnas.backends.base import make_models
    from hwnas.convert import stitch
    from hwnas.files import atomic_write

    cache = ConvertedCache()

    def convert(missing: list[tuple]):
        yield from in_workers(_convert_group, [missing[i:i + MODELS_PER_CONVERSION] for i in
                                               range(0, len(missing), MODELS_PER_CONVERSION)])

    def stitch_files(key: str, part_keys: list[str]) -> None:
        model = stitch([cache.path(k).read_bytes() for k in part_keys])
        atomic_write(cache.path(key), lambda tmp: tmp.write_bytes(model))

    make_models(items, device, lambda key: cache.path(key).exists(), convert, stitch_files,
                advance)
    return [cache.path(key) for _, _, key in items]


class ConvertedCache:
    """Converted models in the user cache (``hwnas.files.user_cache``), one ``.tflite``
    file per model key under the converter's version. Each file is written atomically, so a
    killed conversion leaves nothing half-made behind."""

    def __init__(self) -> None:
        from hwnas.convert import converter_version
        from hwnas.files import user_cache

        from hwnas import __version__

        self.folder = user_cache("tflite", f"hwnas-{__version__}",
                                 converter_version() or "no-converter")

    def path(self, key: str) -> Path:
        import hashlib

        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.tflite"

    def convert(self, group) -> None:
        """Convert (build, input shape, key) models with one conversion, a file each."""
        import torch

        from hwnas.convert import to_tflite_many

        modules = []
        for build, shape, _ in group:
            torch.manual_seed(0)
            modules.append((build(), sample_input(shape)))
        to_tflite_many(modules, [self.path(key) for _, _, key in group])


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
    if tuple(inp["shape"][1:]) == x_nhwc.shape[1:] and inp["shape"][0] != x_nhwc.shape[0]:
        try:  # a batch-1 file (an export) run at the device's batch
            it.resize_tensor_input(inp["index"], list(x_nhwc.shape))
            it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"LiteRT cannot run {path} at batch {x_nhwc.shape[0]}: "
                               f"{exc}") from None
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
                  info={"tflite": str(path), "ops": ops, "accelerator": "xnnpack",
                        "input_shape": tuple(x_nhwc.shape)})
