"""Turning a PyTorch module into the files runtimes load: ONNX and TFLite.

Shared by the profiler backends (which time each op as its own model) and the exporter.
Model I/O layouts are a deliberate choice: ONNX keeps PyTorch's NCHW; TFLite models take
and return **NHWC** (what phone pipelines and the GPU delegate expect), by wrapping the
module in a transpose that the converter folds away, so no TRANSPOSE op is left at the
input of a timed model.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from hwnas.errors import BackendError
from hwnas.files import atomic_write

ONNX_OPSET = 17


def to_onnx(module: nn.Module, sample: torch.Tensor, path: str | Path,
            dynamic_batch: bool = False) -> Path:
    """Export to ONNX (TorchScript exporter, opset 17, one file, NCHW input ``input``)."""
    path = Path(path)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (sample,), str(tmp), input_names=["input"],
                              output_names=["output"], opset_version=ONNX_OPSET,
                              dynamic_axes=axes, dynamo=False)

    try:
        return atomic_write(path, write)
    except Exception as exc:  # the exporter raises many types
        raise BackendError(f"ONNX export failed for {path.name}: {exc}") from exc


class ChannelsLast(nn.Module):
    """NHWC in, NHWC out (4-D outputs), around an NCHW module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if x.dim() == 4 else x


def to_tflite(module: nn.Module, sample_nchw: torch.Tensor, path: str | Path,
              quantize: str | None = None) -> Path:
    """Convert with litert-torch to a ``.tflite`` file with NHWC I/O.

    ``quantize``: None (fp32), ``"fp16"`` (fp16 weights) or ``"int8-dynamic"``
    (dynamic-range int8 weights).
    """
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            import litert_torch
    except ImportError:
        raise BackendError("converting to TFLite needs litert-torch: pip install "
                           "'hwnas[tflite-convert]'") from None
    path = Path(path)
    kwargs = {}
    if quantize is not None:
        kwargs["quant_config"] = _quant_config(quantize)
    wrapped = ChannelsLast(module.eval()).eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(wrapped, (nhwc(sample_nchw),), **kwargs)
            edge.export(str(tmp))

    try:
        return atomic_write(path, write)
    except Exception as exc:
        raise BackendError(f"TFLite conversion failed for {path.name}: {exc}") from exc


def _quant_config(kind: str):
    from litert_torch.generative.quantize import quant_recipes  # type: ignore

    if kind == "fp16":
        return quant_recipes.full_fp16_recipe()
    if kind == "int8-dynamic":
        return quant_recipes.full_dynamic_recipe()
    raise BackendError(f"unknown TFLite quantisation {kind!r}; allowed: fp16, int8-dynamic")


@contextlib.contextmanager
def _quiet():
    """Silence a converter's progress printing on stdout (its stderr logs stay)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
