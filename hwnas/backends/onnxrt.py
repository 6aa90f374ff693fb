"""ONNX Runtime: each op/subnet exported to ONNX, run with a fixed thread count.

The deployed (optimised, fused) graph is what is timed; wall clock around
``session.run`` on CPU, and around ``run_with_iobinding`` with device-resident input and
output on CUDA (the CUDA EP synchronises its stream at the end of a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.backends.base import (BACKENDS, Backend, Runner, cuda_missing, make_models,
                                 sample_input, wallclock)
from hwnas.convert import to_onnx
from hwnas.errors import BackendError
from hwnas.workers import in_workers

MIN_EXPORTS_IN_WORKERS = 16  # fewer: starting the workers (importing torch) costs more
EXPORTS_PER_TASK = 8


def export_group(group) -> None:
    """Export each (build, input shape, path, precision, hardware), the model built under
    seed 0 as :meth:`Backend.prepare_many` builds it (in a worker process on the CPU, see
    :func:`hwnas.workers.in_workers`)."""
    for build, shape, path, precision, hardware in group:
        torch.manual_seed(0)
        export_file(build(), shape, path, precision, hardware)


def _exported(missing: list[tuple], in_workers_too: bool):
    """Export ``missing`` (as :func:`export_group` takes them), yielding each group done:
    in worker processes where there are enough to repay starting them, else here."""
    if in_workers_too and len(missing) >= MIN_EXPORTS_IN_WORKERS:
        yield from in_workers(export_group, [missing[i:i + EXPORTS_PER_TASK]
                                             for i in range(0, len(missing), EXPORTS_PER_TASK)])
        return
    for one in missing:
        export_group([one])
        yield [one]


def export_file(module: nn.Module, input_shape: tuple[int, ...], path, precision: str,
                hardware: str = "cpu") -> None:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    dev = "cuda" if hardware == "cuda" else "cpu"
    to_onnx(module.eval().to(dev, dtype), sample_input(input_shape).to(dev, dtype), path)


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


@BACKENDS.register('onnxruntime')
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    hardware = ("cpu", "cuda")
    file_format = "onnx"

    @classmethod
    def check(cls, device) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)"
        ep = device.execution_provider
        if ep not in ort.get_available_providers():
            return (f"ONNX Runtime {ort.__version__} has no {ep}; available: "
                    f"{ort.get_available_providers()} (CUDA needs the onnxruntime-gpu package)")
        if device.hardware == "cuda":
            return cuda_missing(device.cuda_device)
        return None

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        try:
            import onnxruntime as ort
        except ImportError:
            return {"runtime": "onnxruntime", "runtime_version": None}
        info: dict[str, Any] = {"runtime": "onnxruntime", "runtime_version": ort.__version__}
        if device.hardware == "cuda" and torch.cuda.is_available():
            from hwnas.fingerprint import gpu_info

            info["gpu"] = torch.cuda.get_device_name(device.cuda_device)
            info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(
                device.cuda_device)))
            info["gpu_driver"] = gpu_info().get("gpu_driver")
        return info

    def onnx_file(self, module: nn.Module, input_shape: tuple[int, ...], key: str):
        path = self.cache_path(key, ".onnx")
        if not path.exists():
            export_file(module, input_shape, path, self.device.precision, self.device.hardware)
        return path

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        return self.load(self.onnx_file(module, input_shape, key), input_shape, key)

    def prepare_many(self, items, advance=lambda n: None) -> list[Runner]:
        """Export the missing files, then load each as :meth:`load` does. A network whose
        ``build`` is a :class:`hwnas.ops.NetworkBuild` is stitched from its ops' files
        (:func:`hwnas.convert.stitch_onnx`, each op's weights as its own file has them),
        exported where missing: the ops of a profile's subnets are its LUT's. Exports run
        in worker processes, one per core, where there are many on the CPU (an export is
        ~0.4 s of single-threaded tracing per subnet)."""
        dev = self.device

        def onnx_path(key: str) -> Path:
            return self.cache_path(key, ".onnx")

        def export(missing: list[tuple]):
            by_path = {str(onnx_path(key)): (b, s, key) for b, s, key in missing}
            jobs = [(b, s, path, dev.precision, dev.hardware) for path, (b, s, _) in
                    by_path.items()]
            for group in _exported(jobs, in_workers_too=dev.hardware == "cpu"):
                yield [by_path[path] for _, _, path, _, _ in group]

        def stitch(key: str, part_keys: list[str]) -> None:
            import onnx

            from hwnas.convert import stitch_onnx
            from hwnas.files import atomic_write

            model = stitch_onnx([onnx.load(str(onnx_path(k))) for k in part_keys])
            atomic_write(onnx_path(key), lambda tmp: onnx.save(model, str(tmp)))

        make_models(items, dev, lambda key: onnx_path(key).exists(), export, stitch, advance)
        return [self.load(onnx_path(key), shape, key) for _, shape, key in items]

    def discard(self, keys) -> int:
        return self._unlink(self.cache_path(key, ".onnx") for key in keys)

    def load(self, path, input_shape: tuple[int, ...], key: str = "") -> Runner:
        import onnxruntime as ort

        dev = self.device
        providers: list[Any] = [dev.execution_provider]
        if dev.hardware == "cuda":
            providers = [(dev.execution_provider, {"device_id": dev.cuda_device})]
        try:
            sess = ort.InferenceSession(str(path), session_options(dev.threads),
                                        providers=providers)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime could not load {path}: {exc}") from exc
        np_dtype = np.float16 if dev.precision == "fp16" else np.float32
        x = sample_input(input_shape).numpy().astype(np_dtype)
        in_name = sess.get_inputs()[0].name
        out_name = sess.get_outputs()[0].name

        def infer(arr: np.ndarray) -> np.ndarray:
            return sess.run(None, {in_name: arr.astype(np_dtype)})[0].astype(np.float32)

        if dev.hardware == "cuda":
            binding = sess.io_binding()
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", dev.cuda_device)
            binding.bind_ortvalue_input(in_name, x_dev)
            binding.bind_output(out_name, "cuda", dev.cuda_device)

            def run() -> None:
                sess.run_with_iobinding(binding)
        else:
            feed = {in_name: x}

            def run() -> None:
                sess.run(None, feed)

        return Runner(run=run, time=lambda n: wallclock(run, n), infer=infer,
                      info={"onnx": str(path), "providers": sess.get_providers()})
