"""Backends: one small module per runtime, each able to time an op or a whole subnet.

Each module registers its class in :data:`BACKENDS` (a new runtime is one new file). The
runtimes themselves (TensorRT, LiteRT, adb) are imported only when a backend uses them, so
a machine without one can still use the others.
"""

from __future__ import annotations

from hwnas.backends.base import BACKENDS, Backend, Runner, wallclock
from hwnas.errors import DeviceError


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (DeviceError naming the known ones)."""
    return BACKENDS.get(name)


def get_backend(device, cache_dir=None) -> Backend:
    """A ready backend for a device (raises DeviceError if it cannot run here)."""
    cls = get_backend_class(device.backend)
    missing = cls.check(device)
    if missing:
        raise DeviceError(f"device {device.name!r} cannot run on this machine: {missing}")
    return cls(device, cache_dir)


__all__ = ["BACKENDS", "Backend", "Runner", "get_backend", "get_backend_class", "wallclock"]
