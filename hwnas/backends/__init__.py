"""Backends: one small module per runtime, each able to time an op or a whole subnet.

``get_backend_class(name)`` imports a backend only when it is asked for, so a machine
without TensorRT or adb can still use the others.
"""

from __future__ import annotations

import importlib

from hwnas.backends.base import Backend, Runner, wallclock
from hwnas.errors import DeviceError

_REGISTRY = {
    "torch": ("hwnas.backends.pytorch", "TorchBackend"),
    "onnxruntime": ("hwnas.backends.onnxrt", "OnnxRuntimeBackend"),
    "tflite": ("hwnas.backends.tflite", "TFLiteBackend"),
    "tensorrt": ("hwnas.backends.tensorrt", "TensorRTBackend"),
    "adb-tflite": ("hwnas.backends.adb_tflite", "AdbTFLiteBackend"),
}


def get_backend_class(name: str) -> type[Backend]:
    try:
        module, cls = _REGISTRY[name]
    except KeyError:
        raise DeviceError(f"unknown backend {name!r}; known: {sorted(_REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


def get_backend(device, cache_dir=None) -> Backend:
    """A ready backend for a device (raises DeviceError if it cannot run here)."""
    cls = get_backend_class(device.backend)
    missing = cls.check(device)
    if missing:
        raise DeviceError(f"device {device.name!r} cannot run on this machine: {missing}")
    return cls(device, cache_dir)


__all__ = ["Backend", "Runner", "get_backend", "get_backend_class", "wallclock"]
