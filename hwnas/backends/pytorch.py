"""PyTorch eager: wall clock on CPU (with a steady heap, see ``steady_heap``), CUDA events
on GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.backends.base import (BACKENDS, Backend, Runner, cuda_events, cuda_missing,
                                 sample_input, steady_heap, tf32, wallclock)


@BACKENDS.register('torch')
class TorchBackend(Backend):
    name = "torch"
    hardware = ("cpu", "cuda")

    def __init__(self, device, cache_dir=None) -> None:
        super().__init__(device, cache_dir)
        torch.set_num_threads(device.threads)
        if device.hardware == "cpu":
            steady_heap()
        self.torch_device = torch.device(
            f"cuda:{device.cuda_device}" if device.hardware == "cuda" else "cpu")
        self.dtype = torch.float16 if device.precision == "fp16" else torch.float32

    @classmethod
    def check(cls, device) -> str | None:
        if device.hardware == "cuda":
            return cuda_missing(device.cuda_device)
        return None

    @classmethod
    def runtime_info(cls, device) -> dict[str, Any]:
        info: dict[str, Any] = {"runtime": "torch", "runtime_version": torch.__version__}
        if device.hardware == "cpu":
            info["heap"] = steady_heap()
        if device.hardware == "cuda" and torch.cuda.is_available():
            from hwnas.fingerprint import gpu_info

            info["gpu"] = torch.cuda.get_device_name(device.cuda_device)
            info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(
                device.cuda_device)))
            info["gpu_driver"] = gpu_info().get("gpu_driver")
            info["cuda"] = torch.version.cuda
            info["tf32"] = False  # fp32 means fp32 (see ``tf32``)
        return info

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], key: str) -> Runner:
        module = module.eval().to(self.torch_device, self.dtype)
        x = sample_input(input_shape).to(self.torch_device, self.dtype)

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return module(x)

        def infer(arr: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), tf32(False):
                t = torch.from_numpy(arr).to(self.torch_device, self.dtype)
                return module(t).float().cpu().numpy()

        if self.torch_device.type == "cuda":
            def timer(n: int) -> np.ndarray:
                with tf32(False):
                    return cuda_events(run, n, device=self.torch_device.index)
        else:
            def timer(n: int) -> np.ndarray:
                return wallclock(run, n)

        return Runner(run=run, time=timer, infer=infer)
